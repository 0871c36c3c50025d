"""One live run per output_dir: a second run is refused naming the first; a dead run's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from train.run_lock import LOCK_FILE, RunLock, RunLocked


def test_a_live_run_refuses_a_second_one(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(
        RunLocked, match=rf"output_dir {tmp_path} is in use by a live run \(pid {os.getpid()} on"
    ):
        RunLock(tmp_path).acquire()
    first.release()
    second = RunLock(tmp_path)
    assert second.acquire() is None  # the same process released and took it again: nothing to report
    second.release()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from train.run_lock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
        RunLock(tmp_path).acquire()
    proc.kill()  # kill -9: no cleanup ran, the lock file still names it
    proc.wait()
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert f"took over the lock of an earlier run that is no longer alive (pid {proc.pid}" in note
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_without_flock_a_requeued_slurm_job_takes_over(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(37, "No locks available")  # ENOLCK: a Lustre mount without -o flock

    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": 1, "host": "node-7", "slurm_job_id": "42", "started_at": time.ctime()})
    )
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(RunLocked, match="pid 1 on node-7, SLURM job 42"):
        RunLock(tmp_path).acquire()  # another job on another host: assumed alive
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert "SLURM job 42" in RunLock(tmp_path).acquire()  # the same job id again: a requeue
    dead = {"pid": 2**22 + 1, "host": socket.gethostname(), "slurm_job_id": None, "started_at": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(dead))
    monkeypatch.delenv("SLURM_JOB_ID")
    assert "no longer alive" in RunLock(tmp_path).acquire()  # this host, pid gone
