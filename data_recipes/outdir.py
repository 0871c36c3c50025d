"""Output folders a command owns: never delete what the command did not create.

Every command that writes a folder (``data build --out``, ``tokenizer --out``, and the export) follows
the same contract:

* ``--out`` that exists and is not empty is refused unless ``--overwrite``;
* ``--overwrite`` replaces only a folder this tool wrote: one holding :data:`MARKER`, written by the
  same command, whose entries are exactly those the marker lists (a file the user added inside it
  makes it theirs again), and never a folder that holds one of the command's own inputs (its config,
  raw sources, tokenizer, checkpoint);
* the new content is written into a hidden staging folder next to ``--out`` (:func:`staging_dir`) and
  renamed into place by :func:`commit` only when complete; any failure, Ctrl-C or SIGTERM
  (:func:`stop_signals_raise`) removes the staging folder, so nothing half-written keeps the target's name.

A full disk becomes :class:`DiskFullError`: which device, how much the command needs (an estimate),
and that the partial files were removed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".hermes-sft-owner.json"


class OutputRefused(ValueError):
    """``--out`` cannot be used (not empty without ``--overwrite``, not ours, holds an input)."""


class DiskFullError(OSError):
    """No space left while writing an output; the partial files are already removed."""

    def __init__(
        self, path: Path, need_bytes: int | None, what: str, hint: str = "choose another --out"
    ) -> None:
        device = mount_point(path)
        free = shutil.disk_usage(device).free if device.exists() else 0
        need = f", needs ~{_size(need_bytes)} (estimate)" if need_bytes else ""
        super().__init__(
            errno.ENOSPC,
            f"no space left on {device} while writing {what}{need}, {_size(free)} free; "
            f"the partial files were removed: free some space or {hint}",
        )
        self.filename = str(path)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class Terminated(BaseException):
    """SIGTERM received while a command was writing (a BaseException, like KeyboardInterrupt, so
    every ``except Exception`` lets it through to the cleanup)."""


def mount_point(path: Path) -> Path:
    """The mount point holding ``path`` (for "no space left on …")."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "hermes-sft" else None


def check_out(
    out: str | os.PathLike, overwrite: bool, command: str, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Refuse ``out`` unless it is absent, empty, or (with ``overwrite``) a folder this command wrote
    that holds none of ``inputs``. Returns the resolved path. Deletes nothing."""
    target = Path(out).expanduser().resolve()
    for given in inputs:
        p = Path(given).expanduser().resolve()
        if _inside(p, target):
            raise OutputRefused(
                f"--out {out} holds this command's input {given}; it is never replaced: choose another --out"
            )
    if not target.exists():
        return target
    if not target.is_dir():
        raise OutputRefused(f"--out {out} exists and is a file, not a folder: choose another --out")
    entries = {e.name for e in target.iterdir()}
    if not entries:
        return target
    if not overwrite:
        raise OutputRefused(f"--out {out} exists and is not empty: pass --overwrite to replace it")
    marker = read_marker(target)
    if marker is None:
        raise OutputRefused(
            f"--out {out} was not written by hermes-sft (no {MARKER}); --overwrite only replaces "
            "folders this tool wrote: remove it yourself or choose another --out"
        )
    if marker.get("command") != command:
        raise OutputRefused(
            f"--out {out} was written by `hermes-sft {marker.get('command')}`, not `{command}`: "
            "choose another --out"
        )
    foreign = sorted(entries - set(marker.get("entries", [])) - {MARKER})
    if foreign:
        raise OutputRefused(
            f"--out {out} holds files hermes-sft did not write ({', '.join(foreign[:5])}); "
            "--overwrite never deletes them: move them out or choose another --out"
        )
    return target


def staging_dir(target: Path) -> Path:
    """A new hidden folder next to ``target`` (same file system, so :func:`commit` is a rename);
    staging folders of dead processes aimed at the same target are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_marker(folder: Path, command: str, entries: Iterable[str] | None = None) -> None:
    """Record that ``command`` wrote ``folder`` and which top-level entries are its own (default: all
    there now; a command that fills the folder over minutes names them up front)."""
    if entries is None:
        entries = (e.name for e in folder.iterdir() if e.name != MARKER)
    entries = sorted(entries)
    text = json.dumps({"tool": "hermes-sft", "command": command, "entries": entries}, indent=2)
    (folder / MARKER).write_text(text + "\n", encoding="utf-8")


def commit(staging: Path, target: Path, command: str, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Mark ``staging`` as ours and rename it to ``target``; an existing ``target`` is checked again
    (it may have changed since the start) and removed only after the new folder is in place."""
    write_marker(staging, command)
    if not target.exists():
        staging.rename(target)
        return
    check_out(target, overwrite, command, inputs)
    old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt`` in the main
    thread, so the same cleanup runs for both (``except BaseException`` / ``finally``).

    Two details make that hold with worker pools (``datasets.map(num_proc=N)``): a forked worker that
    inherited the handler dies at once with the default action (no traceback per worker), and when
    library code replaces the exception on its way up (``datasets`` turns it into a ``TimeoutError``
    in a ``finally``), the block still ends with ``Terminated`` / ``KeyboardInterrupt``. Outside the
    main thread: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, received = os.getpid(), []

    def handle(signum, frame):
        if os.getpid() != owner:  # a forked worker: stop quietly, the owner cleans up
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        raise _stop_error(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except BaseException as err:
        if received and not isinstance(err, Terminated | KeyboardInterrupt):
            raise _stop_error(received[0]) from err
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_error(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def owned_output(
    out: str | os.PathLike,
    command: str,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike] = (),
    need_bytes: int | None = None,
) -> Iterator[Path]:
    """``with owned_output(out, "data build", overwrite, inputs) as staging:`` write into ``staging``;
    on success it becomes ``out`` (with the marker), on any failure or signal it is removed."""
    inputs = [Path(p).expanduser().resolve() for p in inputs]
    target = check_out(out, overwrite, command, inputs)
    with stop_signals_raise():
        try:
            staging = staging_dir(target)
        except OSError as err:  # read-only mount, no permission: name --out, not the staging name
            raise type(err)(err.errno, err.strerror, str(target)) from err
        try:
            yield staging
            commit(staging, target, command, overwrite, inputs)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            if err.errno == errno.ENOSPC and not isinstance(err, DiskFullError):
                raise DiskFullError(target, need_bytes, f"--out {out}") from err
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
