"""Output folders that are either complete or absent, and the streamed tensor-writing loop.

:func:`atomic_output_dir` hands out a hidden temporary folder next to the target
(``.NAME.tmp-PID``); only when everything inside was written (and fsynced) is it renamed to the
target. Any failure — a full disk, a bad layer, Ctrl-C — removes the temporary folder, so no
half-written folder ever carries the target's name. An existing non-empty target is refused unless
``overwrite`` (then it is replaced only after the new folder is complete).

:func:`write_outputs` plans the shards for a list of :class:`Output` s, checks the free space, then
runs each output's producer, which pushes row chunks into the :class:`ShardedWriter`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from train.export.safetensors_io import ShardedWriter, TensorSpec


@dataclass
class Output:
    """One or more planned tensors and the function that fills them."""

    specs: list[TensorSpec]
    produce: Callable[[ShardedWriter], None]
    label: str = ""


def check_target(out: Path, overwrite: bool, protect: list[Path] = ()) -> None:
    out = out.resolve()
    for p in protect:
        p = p.resolve()
        if p == out or p.is_relative_to(out):
            raise ValueError(f"--out {out} would replace the source {p}; choose another output folder")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise ValueError(f"{out}: exists and is not empty; pass --overwrite to replace it")


def _clean_stale(out: Path) -> None:
    """Remove temporary folders of earlier exports to ``out`` whose process is gone."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        pid = stale.name.rsplit("-", 2)[-2] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    out = Path(out).resolve()
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_free_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need * 1.02 + (64 << 20):
        raise ValueError(
            f"not enough disk space in {folder}: the export needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def write_outputs(
    folder: Path,
    outputs: list[Output],
    max_shard_bytes: int,
    progress: bool = True,
    stem: str = "model",
    single_file: str | None = None,
) -> ShardedWriter:
    specs = [s for o in outputs for s in o.specs]
    writer = ShardedWriter(folder, specs, max_shard_bytes, stem=stem, single_file=single_file)
    check_free_space(folder, writer.file_bytes)
    bar = tqdm(total=writer.total_bytes, unit="B", unit_scale=True, desc="export", disable=not progress)
    try:
        for output in outputs:
            output.produce(writer)
            bar.update(sum(s.nbytes for s in output.specs))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return writer
