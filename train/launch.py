"""Process launch: find this rank under torchrun / deepspeed / srun, or start N local ranks ourselves.

* torchrun and the ``deepspeed`` launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*: used as is.
* ``srun hermes-sft train ...`` without torchrun (one task per GPU): the rank comes from SLURM_PROCID,
  the world from SLURM_STEP_NUM_TASKS, the master from the first host of the step's node list.
* Nothing set: one process, rank 0 of 1.
* ``--nproc-per-node N``: this process becomes a small supervisor that starts N ranks, forwards SIGTERM /
  SIGUSR1 to them (they checkpoint and exit 0) and stops the others if one fails. It has no time limit
  on a graceful stop (torchrun's default is 30 s, too short to save a 70B checkpoint). The ranks never
  outlive it: each asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) for a SIGTERM when the
  supervisor dies, even by SIGKILL, so they checkpoint and exit. A rank that is stopped (SIGSTOP, a
  frozen job step) for ``stalled_sec`` is named and the run ends, instead of the others waiting in a
  collective until its timeout (``distributed.timeout_minutes``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PORT_BASE, PORT_SPAN = 20000, 20000
PR_SET_PDEATHSIG = 1
STALLED_SEC = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_torchrun(args: list[str], nproc: int = 2, python: str | None = None) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` ranks on this machine, on a free port (tests, benches)."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(free_port()), *args]  # fmt: skip


def slurm_hostnames(nodelist: str) -> list[str]:
    """Expand a SLURM node list with ``scontrol show hostnames`` (the only exact expander)."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise ValueError(f"`scontrol show hostnames {nodelist}` failed: {out.stderr.strip() or 'no output'}")
    return out.stdout.split()


def slurm_port(job_id: str | None) -> int:
    """A rendezvous port derived from the job id (stable across requeues, distinct between jobs)."""
    return PORT_BASE + int(job_id or 0) % PORT_SPAN


def rank_env(environ: dict[str, str], local_rank_arg: int | None = None) -> dict[str, str]:
    """The distributed variables for this process, from whichever launcher started it."""
    env: dict[str, str] = {}
    if "RANK" in environ and "WORLD_SIZE" in environ:  # torchrun, deepspeed, accelerate, our --nproc-per-node
        if "LOCAL_RANK" not in environ:
            env["LOCAL_RANK"] = str(local_rank_arg if local_rank_arg is not None else 0)
        return env
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "0") or 0)
    if "SLURM_PROCID" in environ and tasks > 1:  # srun with one task per GPU, no torchrun
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
        env.update(
            RANK=environ["SLURM_PROCID"],
            WORLD_SIZE=str(tasks),
            LOCAL_RANK=environ.get("SLURM_LOCALID", "0"),
            MASTER_ADDR=environ.get("MASTER_ADDR") or slurm_hostnames(nodelist)[0],
            MASTER_PORT=environ.get("MASTER_PORT") or str(slurm_port(environ.get("SLURM_JOB_ID"))),
        )
        return env
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    env.setdefault("MASTER_ADDR", environ.get("MASTER_ADDR", "127.0.0.1"))
    env["MASTER_PORT"] = environ.get("MASTER_PORT") or str(free_port())
    return env


def apply_rank_env(local_rank_arg: int | None = None) -> None:
    os.environ.update(rank_env(dict(os.environ), local_rank_arg))
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def worker_env(base: dict[str, str], rank: int, nproc: int, port: int, cpus: int) -> dict[str, str]:
    env = dict(base)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // nproc)))
    return env


def die_with_parent(parent: int) -> None:
    """In a rank, before exec: SIGTERM when the supervisor (``parent``) dies (Linux ``prctl``; elsewhere
    the supervisor's own signal forwarding is all there is)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (state T: SIGSTOP, a suspended job) per /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def spawn_local(
    nproc: int,
    python_args: list[str],
    master_port: int | None = None,
    grace_sec: float = 5.0,
    stalled_sec: float = STALLED_SEC,
) -> int:
    """Run ``python <python_args>`` as ``nproc`` local ranks (RANK etc. set); return the first failure's
    exit code, or 0 when all ranks exit 0."""
    if nproc < 1:
        raise ValueError(f"--nproc-per-node {nproc}: must be at least 1")
    port = master_port or free_port()
    cmd = [sys.executable, *python_args]
    base = dict(os.environ)
    if not _has_cuda():
        base.setdefault("DS_ACCELERATOR", "cpu")
    me = os.getpid()
    procs = [
        subprocess.Popen(
            cmd,
            env=worker_env(base, r, nproc, port, os.cpu_count() or 1),
            preexec_fn=lambda: die_with_parent(me),
        )
        for r in range(nproc)
    ]
    forwarded: list[int] = []

    def forward(signum: int, frame) -> None:
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return _supervise(procs, grace_sec, stalled_sec)
    except KeyboardInterrupt:
        _stop_all(procs, signal.SIGINT, grace_sec)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(procs: list[subprocess.Popen], grace_sec: float, stalled_sec: float) -> int:
    since: dict[int, float] = {}  # rank -> when it was first seen stopped
    while True:
        rank = _stalled_rank(procs, since, stalled_sec)
        if rank is not None:
            print(
                f"hermes-sft train: rank {rank} (pid {procs[rank].pid}) has been stopped (SIGSTOP / suspended) "
                f"for {stalled_sec:.0f} s; the other ranks cannot finish a collective without it: ending the "
                "run (resume with checkpoint.resume=auto)",
                file=sys.stderr,
                flush=True,
            )
            _stop_all(procs, signal.SIGKILL, grace_sec)  # SIGKILL also ends a stopped process
            return 1
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            _stop_all(procs, signal.SIGTERM, grace_sec)
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def _stalled_rank(procs: list[subprocess.Popen], since: dict[int, float], stalled_sec: float) -> int | None:
    """The first rank stopped for ``stalled_sec`` (``since`` remembers when each was first seen stopped)."""
    now = time.monotonic()
    for rank, p in enumerate(procs):
        if not stopped(p.pid):
            since.pop(rank, None)
        elif now - since.setdefault(rank, now) >= stalled_sec:
            return rank
    return None


def _stop_all(procs: list[subprocess.Popen], sig: int, grace_sec: float) -> None:
    """A rank failed (or Ctrl-C): the others cannot finish their collectives. Ask, then kill."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + grace_sec
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
