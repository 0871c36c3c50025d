"""Rank discovery under each launcher, and the --nproc-per-node supervisor (signals, failures)."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from train.launch import rank_env, slurm_port, spawn_local


def test_torchrun_and_deepspeed_env_is_used_as_is():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert rank_env(env) == {}
    assert rank_env({"RANK": "3", "WORLD_SIZE": "8"}, local_rank_arg=2) == {
        "LOCAL_RANK": "2"
    }  # deepspeed --local_rank


def test_srun_without_torchrun(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'gpu07\\ngpu08\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    env = {
        "SLURM_PROCID": "9",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
    }
    assert rank_env(env) == {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(slurm_port("123456")),
    }
    assert 20000 <= slurm_port("123456") < 40000


def test_plain_process_is_rank_zero_of_one():
    env = rank_env({})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == (
        "0",
        "1",
        "0",
        "127.0.0.1",
    )
    assert int(env["MASTER_PORT"]) > 0
    # an sbatch shell (SLURM_PROCID but no job step) is not a multi-rank srun step
    assert rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})["WORLD_SIZE"] == "1"


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    out = sys.argv[1]
    rank = os.environ["RANK"]
    def stop(signum, frame):
        open(f"{out}/stopped-{rank}", "w").write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, stop)
    open(f"{out}/ready-{rank}", "w").write(os.environ["WORLD_SIZE"] + " " + os.environ["MASTER_PORT"])
    if rank == "1" and len(sys.argv) > 2:
        sys.exit(int(sys.argv[2]))
    time.sleep(60)
    """
)


def test_supervisor_stops_everyone_when_a_rank_fails(tmp_path):
    start = time.monotonic()
    assert spawn_local(2, ["-c", CHILD, str(tmp_path), "7"], master_port=1234) == 7
    assert time.monotonic() - start < 30
    assert (tmp_path / "ready-0").read_text() == "2 1234"
    assert (tmp_path / "stopped-0").read_text() == "SIGTERM"  # the survivor was asked to stop


def test_supervisor_forwards_sigusr1_and_returns_zero(tmp_path):
    import subprocess

    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
        from train.launch import spawn_local
        sys.exit(spawn_local(2, ["-c", {CHILD!r}, {str(tmp_path)!r}]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{r}").exists() for r in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(__import__("signal").SIGUSR1)
    assert proc.wait(timeout=60) == 0
    assert {(tmp_path / f"stopped-{r}").read_text() for r in (0, 1)} == {"SIGUSR1"}


def test_nproc_must_be_positive():
    with pytest.raises(ValueError, match="must be >= 1"):
        spawn_local(0, ["-c", "pass"])
