"""The CLI's one error boundary: any exception a command raises becomes one clear message and an exit code.

* exit 2: usage and input errors (a bad config, a bad file, an unusable ``--out``): the user can fix them;
* exit 1: runtime failures (a full disk, a failed device, a bug);
* 130 / 143: Ctrl-C / SIGTERM (the command has already removed its partial output).

The message says what failed, where (the file, or for an unexpected error the innermost project frame)
and what to do next. ``--debug`` or ``HERMES_SFT_DEBUG=1`` prints the traceback as well.
"""

from __future__ import annotations

import errno
import os
import re
import traceback
from pathlib import Path

import yaml

from data_recipes.outdir import DiskFullError, Terminated, mount_point

USAGE, RUNTIME, INTERRUPTED, TERMINATED = 2, 1, 130, 143
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEBUG_HINT = "rerun with --debug (or HERMES_SFT_DEBUG=1) for the traceback"
# errno values that mean "the path the user gave cannot be used", not a failure of the run itself.
PATH_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
}
OS_HINTS = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "check the permissions or choose another location",
    errno.EPERM: "check the permissions or choose another location",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "expected a file, got a folder",
    errno.EEXIST: "choose another path or remove it",
}


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is among ``argv`` (anywhere) or ``HERMES_SFT_DEBUG`` is set; argv without it."""
    env = os.environ.get("HERMES_SFT_DEBUG", "").lower() in ("1", "true", "yes", "on")
    rest = [a for a in argv if a != "--debug"]
    return env or len(rest) != len(argv), rest


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _where(err: BaseException) -> str:
    """``file:line`` of the innermost traceback frame in this project (for unexpected errors)."""
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(PROJECT_ROOT) and ".venv" not in path.parts:
            return f" at {path.relative_to(PROJECT_ROOT)}:{frame.lineno}"
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _os_error(err: OSError) -> tuple[int, str]:
    if isinstance(err, DiskFullError):  # already a full sentence: device, need, cleanup
        return RUNTIME, err.strerror
    code = USAGE if err.errno in PATH_ERRNOS else RUNTIME
    what = err.strerror or str(err)
    where = f": {err.filename}" if err.filename else ""
    if err.filename2:
        where += f" -> {err.filename2}"
    if err.errno == errno.ENOSPC:
        what = f"no space left on {mount_point(Path(err.filename or '.'))}"
    return code, f"{what}{where}; {OS_HINTS.get(err.errno, DEBUG_HINT)}"


def describe(err: BaseException) -> tuple[int, str]:
    """``(exit code, message)`` for an exception that reached the command boundary."""
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED, "interrupted; partial output was removed"
    if isinstance(err, Terminated):
        return TERMINATED, f"{err}; partial output was removed"
    if isinstance(err, OSError):
        return _os_error(err)
    if isinstance(err, yaml.YAMLError):
        return USAGE, f"invalid YAML: {_one_line(str(err))}"
    if isinstance(err, re.error):
        pattern = f" {err.pattern!r}" if err.pattern is not None else ""
        return USAGE, f"invalid regular expression{pattern}: {err.msg}" + (
            f" at position {err.pos}" if err.pos is not None else ""
        )
    if isinstance(err, EOFError):
        return USAGE, f"unexpected end of a file ({err}): the file is truncated or corrupt{_where(err)}"
    if type(err).__name__ == "SafetensorError":
        return USAGE, f"corrupt or unreadable safetensors file ({err}); re-export or re-copy it"
    if isinstance(err, ValueError):  # our input errors (ConfigError, SampleError, bad files) and JSON/Unicode
        return USAGE, str(err)
    return RUNTIME, f"unexpected {type(err).__name__}: {err}{_where(err)}; {DEBUG_HINT} and report it"
