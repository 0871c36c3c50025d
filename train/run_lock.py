"""One live run per output_dir: an exclusive ``flock`` on ``RUN_DIR/.hermes-sft.lock``, held by rank 0.

Two runs writing the same output_dir would interleave steps and overwrite each other's checkpoints. The
kernel drops an ``flock`` when its holder dies (kill -9, node reboot for a local file system, a SLURM job
cancelled and requeued), so a lock left by a dead job is free by construction: the next run takes it
and says whose it was. The file records the holder (pid, host, SLURM job, start time) for the message a
second run prints. File systems that do not support ``flock`` (some Lustre mounts without ``-o flock``)
fall back to that record: a holder on this host whose pid is gone, or an earlier incarnation of this
SLURM job (a requeue), is stale and taken over; any other holder refuses the run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from data_recipes.outdir import pid_alive

LOCK_FILE = ".hermes-sft.lock"


class RunLocked(ValueError):
    """Another live run holds output_dir."""


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, started {holder.get('started_at')}"


def _stale(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Without flock: is the recorded holder certainly gone?"""
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return True  # the same job id again: SLURM requeued it, the earlier incarnation is dead
    return holder.get("host") == me["host"] and not pid_alive(int(holder.get("pid") or 0))


class RunLock:
    """``acquire()`` → a note when a dead run's lock was taken over (else None); ``release()``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous, me = self._read(), _holder()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(self._refusal(previous)) from None
        except OSError as err:  # no flock on this file system: judge the recorded holder
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            if previous.get("pid") and not _stale(previous, me):
                os.close(fd)
                raise RunLocked(self._refusal(previous)) from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        if previous.get("pid") and previous.get("pid") != me["pid"]:
            return f"took over the lock of an earlier run that is no longer alive ({_describe(previous)})"
        return None

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = _describe(holder) if holder.get("pid") else "another process"
        return (
            f"output_dir {self.path.parent} is in use by a live run ({who}); two runs in one output_dir "
            "would overwrite each other's checkpoints: wait for it to end, stop it (touch "
            f"{self.path.parent}/STOP), or choose another output_dir"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a run that ended normally leaves no holder to report
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
