"""Session fixtures with real 2-rank DeepSpeed ZeRO-3 runs on CPU (gloo), shared by the trainer's and the
export's integration tests. Each launch costs ~15 s of imports, so runs are built once per session:

``sample_dataset``
    the bundled sample mixture built with the real builder (rows of 512 tokens, so steps are fast);
``trained_run``
    a finished tiny full fine-tuning run (6 steps, checkpoints at 3 and 6), trained by
    tests/dist/check_full_run.py, which drives the same recipe object as ``hermes-sft train`` and also
    records internal checks (``trained_run_checks``);
``lora_run``
    a finished tiny LoRA run through the CLI (4 steps, checkpoints at 2 and 4; frozen base excluded from
    checkpoints and written once to RUN_DIR/base_model/).

Run dirs follow docs/architecture.md; nothing here writes outside pytest's tmp dirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from train.launch import free_port, local_torchrun

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny-cpu.yaml"
LAUNCH_TIMEOUT = 600
FULL_OVERRIDES = [
    "schedule.steps=6",
    "checkpoint.every_steps=3",
    "checkpoint.keep_last=3",
    "logging.progress=false",
]
LORA_OVERRIDES = [
    "schedule.steps=4",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "logging.progress=false",
    "lora.enabled=true",
    "lora.r=8",
    "lora.alpha=16",
    "lora.dropout=0.1",
    "optim.lr=1e-2",
]


def launch_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def train_cmd(*args: str, nproc: int = 2) -> list[str]:
    """``hermes-sft train`` (the installed entry point's module) with ``--nproc-per-node``."""
    cmd = [sys.executable, "-m", "train.cli", "train", str(TINY_CONFIG), *args]
    return [*cmd, "--nproc-per-node", str(nproc), "--master-port", str(free_port())] if nproc > 1 else cmd


def run_logged(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: int = LAUNCH_TIMEOUT
) -> int:
    """Run to completion with output in ``log`` (shown on failure); returns the exit code."""
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=env or launch_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    return proc.returncode


def tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else "(no log)"


@dataclass
class Launcher:
    """Helpers for tests that start their own runs (a fixture, since test modules cannot import conftest)."""

    repo: Path = REPO
    full_overrides: list[str] = field(default_factory=lambda: list(FULL_OVERRIDES))
    lora_overrides: list[str] = field(default_factory=lambda: list(LORA_OVERRIDES))

    @staticmethod
    def cmd(*args: str, nproc: int = 2) -> list[str]:
        return train_cmd(*args, nproc=nproc)

    @staticmethod
    def env(**extra: str) -> dict[str, str]:
        return launch_env(**extra)

    @staticmethod
    def run(
        cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: int = LAUNCH_TIMEOUT
    ) -> int:
        return run_logged(cmd, log, env, timeout)

    @staticmethod
    def tail(log: Path, n: int = 60) -> str:
        return tail(log, n)


@pytest.fixture(scope="session")
def launcher() -> Launcher:
    return Launcher()


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sample-512"
    log = out.parent / "build.log"
    cmd = [
        sys.executable,
        "-m",
        "train.cli",
        "data",
        "build",
        str(REPO / "configs/data/sample.yaml"),
        "max_seq_len=512",
        "--out",
        str(out),
        "--quiet",
    ]
    rc = run_logged(cmd, log, timeout=300)
    assert rc == 0, f"data build failed:\n{tail(log)}"
    return out


@pytest.fixture(scope="session")
def trained_run_result(tmp_path_factory, sample_dataset) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("trained")
    run_dir, result, log = root / "run", root / "check.json", root / "launch.log"
    cmd = local_torchrun([
        str(REPO / "tests/dist/check_full_run.py"),
        str(TINY_CONFIG),
        f"output_dir={run_dir}",
        f"data.path={sample_dataset}",
        *FULL_OVERRIDES,
        "--result",
        str(result),
    ])  # fmt: skip
    rc = run_logged(cmd, log)
    assert rc == 0 and result.is_file(), f"check_full_run failed ({rc}):\n{tail(log)}"
    return run_dir, json.loads(result.read_text())


@pytest.fixture(scope="session")
def trained_run(trained_run_result) -> Path:
    """RUN_DIR of a finished 2-rank ZeRO-3 full fine-tuning of the tiny model (checkpoints step 3 and 6)."""
    return trained_run_result[0]


@pytest.fixture(scope="session")
def trained_run_checks(trained_run_result) -> dict:
    return trained_run_result[1]


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, sample_dataset) -> Path:
    """RUN_DIR of a finished 2-rank ZeRO-3 LoRA run of the tiny model (checkpoints step 2 and 4)."""
    root = tmp_path_factory.mktemp("lora")
    run_dir, log = root / "run", root / "launch.log"
    rc = run_logged(train_cmd(f"output_dir={run_dir}", f"data.path={sample_dataset}", *LORA_OVERRIDES), log)
    assert rc == 0, f"LoRA run failed ({rc}):\n{tail(log)}"
    return run_dir
