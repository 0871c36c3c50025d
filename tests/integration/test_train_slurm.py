"""The SLURM scripts in a simulated allocation: fake ``scontrol`` / ``srun`` on PATH plus SLURM_* variables.

Dry run: the exact per-node torchrun commands. Live (with a fake srun standing in for the trainer): the
preflight runs first, and USR1 before the time limit → STOP file → checkpoint-and-exit → requeue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then
  [[ "$3" == "gpu[01-02]" ]] && printf 'gpu01\\ngpu02\\n' || echo "$3"
  exit 0
fi
echo "$*" >> "$FAKE_LOG"
"""
# Stands in for `srun torchrun ... hermes-sft train`: the preflight passes; training waits for the STOP
# file the batch script writes on USR1, then "saves" and exits 0 like the trainer does.
FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
[[ " $* " == *" --preflight "* ]] && exit 0
mkdir -p "$FAKE_OUT" && touch "$FAKE_OUT/.training"
for _ in $(seq 600); do
  if [[ -f "$FAKE_OUT/STOP" ]]; then echo '{"status": "stopped"}' > "$FAKE_OUT/summary.json"; exit 0; fi
  sleep 0.1
done
exit 3
"""


@pytest.fixture
def slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu[01-02]",
        SLURM_GPUS_ON_NODE="8",
        SLURM_SUBMIT_DIR=str(REPO),
        FAKE_LOG=str(tmp_path / "calls.log"),
        FAKE_OUT=str(tmp_path / "run"),
    )
    env.pop("HERMES_SFT_DRY_RUN", None)
    return env


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a slurm/ script with bash (as sbatch would) in the fake allocation."""
    return subprocess.run(
        ["bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def torchrun_words(config: str, *overrides: str) -> str:
    return (
        "torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu01:24242 --rdzv-id=4242 "
        "--max-restarts=0 --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=900 "
        f"-m train.cli train {config}" + "".join(f" {o}" for o in overrides)
    )


def test_dry_run_prints_each_nodes_torchrun(slurm_env):
    env = dict(slurm_env, HERMES_SFT_DRY_RUN="1")
    out = run_script("slurm/llama-3.1-70b-full.sbatch", "optim.lr=2e-5", "logging.wandb=true", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    expected = torchrun_words("configs/llama-3.1-70b-full.yaml", "optim.lr=2e-5", "logging.wandb=true")
    assert f"node 0 gpu01: {expected}" in lines
    assert f"node 1 gpu02: {expected}" in lines
    srun = "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpu-bind=none"
    assert f"train:     {srun} {expected}" in lines
    assert f"preflight: {srun} {expected} --preflight" in lines
    assert "hermes-sft: 8 GPU(s) per node, world size 16, rendezvous gpu01:24242 (c10d)" in lines
    assert "hermes-sft:   grad_accum = 24 (world size 16)" in lines  # resolved settings are echoed
    assert "hermes-sft:   output_dir = /shared/runs/llama-3.1-70b-hermes4" in lines
    assert not Path(slurm_env["FAKE_LOG"]).exists()  # nothing was launched


def test_dry_run_refuses_a_bad_config_and_a_missing_allocation(slurm_env):
    env = dict(slurm_env, HERMES_SFT_DRY_RUN="1")
    bad = run_script("slurm/train.sbatch", "configs/tiny-cpu.yaml", "optim.lr=fast", env=env)
    assert bad.returncode != 0 and "optim.lr: expected a number" in bad.stderr
    split = run_script("slurm/train.sbatch", "configs/tiny-cpu.yaml", "batch.global_batch_size=6", env=env)
    assert split.returncode != 0 and "not divisible by micro_batch_size (1) x world size (16)" in split.stderr
    no_job = {k: v for k, v in env.items() if k != "SLURM_JOB_ID"}
    out = run_script("slurm/train.sbatch", "configs/tiny-cpu.yaml", env=no_job)
    assert out.returncode != 0 and "not inside a SLURM allocation" in out.stderr


def test_usr1_before_the_time_limit_checkpoints_and_requeues(slurm_env, tmp_path):
    run_dir = Path(slurm_env["FAKE_OUT"])
    cmd = [
        "bash",
        "slurm/train.sbatch",
        "configs/tiny-cpu.yaml",
        f"output_dir={run_dir}",
        "batch.global_batch_size=16",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (run_dir / ".training").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@900 delivers to the batch shell
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    calls = Path(slurm_env["FAKE_LOG"]).read_text().splitlines()
    assert calls[0].startswith("srun --nodes=2") and calls[0].endswith("--preflight")
    assert calls[1].endswith(
        f"-m train.cli train configs/tiny-cpu.yaml output_dir={run_dir} batch.global_batch_size=16"
    )
    assert calls[2] == "requeue 4242"
    assert (run_dir / "STOP").exists()
    assert "requeueing job 4242" in out


def test_data_build_wrapper_dry_run(slurm_env):
    env = dict(slurm_env, HERMES_SFT_DRY_RUN="1", SLURM_CPUS_PER_TASK="16")
    out = run_script(
        "slurm/data-build.sbatch", "configs/data/sample.yaml", "/shared/data/x", "max_seq_len=4096", env=env
    )
    assert out.returncode == 0, out.stderr
    assert (
        "dry run: srun --ntasks=1 hermes-sft data build configs/data/sample.yaml max_seq_len=4096 "
        "--out /shared/data/x --num-proc 16"
    ) in out.stdout
    assert "dry run: SRUN_CPUS_PER_TASK=16" in out.stdout  # srun >= 22.05 does not inherit it from sbatch
    out = run_script("slurm/data-build.sbatch", "c.yaml", "/o", env=dict(env, SLURM_CPUS_PER_TASK=""))
    assert (
        "dry run: srun --ntasks=1 hermes-sft data build c.yaml --out /o \n" in out.stdout
    )  # default: affinity


def test_sbatch_directives_are_literal():
    for script in sorted((REPO / "slurm").glob("*.sbatch")):
        for line in script.read_text().splitlines():
            if line.startswith("#SBATCH"):
                assert "$" not in line, f"{script.name}: sbatch does not expand variables: {line}"
