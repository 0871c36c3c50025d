"""Durable small-file writes shared by checkpoints and exports (one home for ``write_json``/``fsync_dir``).

A file is written to ``NAME.tmp``, fsynced and renamed over ``NAME``, so a reader sees the old file or
the new one, never half of one; :func:`fsync_dir` then makes the rename itself survive a crash.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, obj: Any, *, sort_keys: bool = True) -> None:
    """Write ``obj`` as UTF-8 JSON (indent 2, newline at the end) durably: temporary file, fsync, rename.

    ``sort_keys=False`` keeps the caller's key order (export files whose order is part of their bytes).
    """
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk.

    File systems that cannot sync a directory (EINVAL / ENOTSUP, some network mounts) are skipped: there
    the rename is as durable as that file system makes it, and failing the save would help no one.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
