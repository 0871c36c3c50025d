"""DPO for real: 2 ranks, DeepSpeed ZeRO-3 over gloo, the tiny Llama, the bundled preference pairs.

Launches: a LoRA DPO run through the CLI (adapter-disabled reference; eval on the training pairs), its
resume from the middle, a full-weight DPO run with RPO through tests/dist/check_dpo_run.py (engine
gradients vs a single-process reference; precomputed reference log-probs), its resume, and a refusal.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.cli import main as cli_main
from train.launch import local_torchrun

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DPO_CONFIG = REPO / "configs" / "tiny-cpu-dpo.yaml"
COMMON = ["data.max_seq_len=1024", "logging.progress=false", "checkpoint.keep_last=3"]
LORA = [
    *COMMON,
    "schedule.steps=6",
    "checkpoint.every_steps=3",
    "data.eval_split=train",
    "logging.eval_every_steps=3",
]
FULL = [*COMMON, "schedule.steps=4", "checkpoint.every_steps=2", "lora.enabled=false", "optim.lr=1e-3",
        "dpo.rpo_alpha=0.5"]  # fmt: skip


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steps(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(run_dir) if "loss" in r}


def evals(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(run_dir) if "eval_loss" in r}


def latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def dpo_cmd(*args: str, nproc: int = 2) -> list[str]:
    from train.launch import free_port

    cmd = [sys.executable, "-m", "train.cli", "train", str(DPO_CONFIG), *args]
    return [*cmd, "--nproc-per-node", str(nproc), "--master-port", str(free_port())] if nproc > 1 else cmd


@pytest.fixture(scope="module")
def pref_dataset(tmp_path_factory, launcher) -> Path:
    out = tmp_path_factory.mktemp("pref") / "pairs-1024"
    cmd = [sys.executable, "-m", "train.cli", "data", "build", str(REPO / "configs/data/sample-preference.yaml"),
           "max_seq_len=1024", "--out", str(out), "--quiet"]  # fmt: skip
    log = out.parent / "build.log"
    assert launcher.run(cmd, log, timeout=300) == 0, launcher.tail(log)
    return out


@pytest.fixture(scope="module")
def lora_dpo(tmp_path_factory, pref_dataset, launcher) -> Path:
    run_dir = tmp_path_factory.mktemp("dpo-lora") / "run"
    log = run_dir.parent / "launch.log"
    rc = launcher.run(dpo_cmd(f"output_dir={run_dir}", f"data.path={pref_dataset}", *LORA), log)
    assert rc == 0, launcher.tail(log)
    return run_dir


@pytest.fixture(scope="module")
def full_dpo(tmp_path_factory, pref_dataset, launcher) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dpo-full")
    run_dir, result, log = root / "run", root / "check.json", root / "launch.log"
    cmd = local_torchrun([str(REPO / "tests/dist/check_dpo_run.py"), str(DPO_CONFIG), f"output_dir={run_dir}",
                          f"data.path={pref_dataset}", *FULL, "--result", str(result)])  # fmt: skip
    assert launcher.run(cmd, log) == 0 and result.is_file(), launcher.tail(log)
    return run_dir, json.loads(result.read_text())


def test_first_step_loss_is_ln2_with_zero_rewards(lora_dpo):
    first = steps(lora_dpo)[1]
    assert abs(first["loss"] - math.log(2)) < 1e-4
    for key in ("rewards_chosen", "rewards_rejected", "reward_margin"):
        assert abs(first[key]) < 1e-4, key
    assert first["pairs"] > 0 and first["logps_chosen"] < 0 and first["logps_rejected"] < 0


def test_lora_dpo_raises_margin_and_accuracy_on_the_training_pairs(lora_dpo):
    e = evals(lora_dpo)  # eval split = train: the training pairs, scored at steps 3 and 6
    assert sorted(e) == [3, 6]
    assert 0 < e[3]["eval_reward_margin"] < e[6]["eval_reward_margin"]
    assert e[6]["eval_reward_accuracy"] >= e[3]["eval_reward_accuracy"] and e[6]["eval_reward_accuracy"] > 0.6
    assert e[6]["eval_loss"] < e[3]["eval_loss"] < math.log(2)
    assert (
        e[6]["eval_pairs"]
        == json.loads((lora_dpo / "data_manifest.json").read_text())["splits"]["train"]["num_pairs"]
    )


def test_dpo_metrics_reach_every_sink(lora_dpo):
    keys = {"loss", "rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin", "logps_chosen",
            "logps_rejected", "pairs", "grad_norm", "lr", "mfu"}  # fmt: skip
    assert all(keys <= set(r) for r in steps(lora_dpo).values())
    assert (lora_dpo / "loss.png").is_file() and list((lora_dpo / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(lora_dpo / "tb")).Reload().Tags()["scalars"]
    assert {"train/reward_margin", "train/reward_accuracy", "eval/reward_margin"} <= set(tags)
    summary = json.loads((lora_dpo / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_reward_margin"] > 0


def test_lora_dpo_resume_equals_straight_run(lora_dpo, tmp_path, pref_dataset, launcher):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(lora_dpo, run)
    expected, straight = load_file(latest(run) / "adapter_model.safetensors"), steps(run)
    args = [f"output_dir={run}", f"data.path={pref_dataset}", *LORA,
            f"checkpoint.resume={run / 'checkpoints' / 'step-00000003'}"]  # fmt: skip
    log = tmp_path / "resume.log"
    assert launcher.run(dpo_cmd(*args), log) == 0, launcher.tail(log)
    assert "resumed from" in log.read_text()
    resumed = load_file(latest(run) / "adapter_model.safetensors")
    assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)
    after = steps(run)
    for s in (4, 5, 6):
        assert (
            after[s]["loss"] == straight[s]["loss"]
            and after[s]["reward_margin"] == straight[s]["reward_margin"]
        )


def test_dpo_adapter_is_non_empty_exports_and_verifies(lora_dpo, tmp_path):
    from safetensors.torch import load_file

    adapter = load_file(latest(lora_dpo) / "adapter_model.safetensors")
    assert len(adapter) == 2 * 7 * 2 and all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    assert cli_main(["export", str(lora_dpo), "--out", str(tmp_path / "adapter"), "--quiet"]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    merged = ["export", str(lora_dpo), "--out", str(tmp_path / "merged"), "--merge-lora", "--quiet"]
    assert cli_main(merged) == 0
    assert (tmp_path / "merged" / "config.json").is_file()
    assert cli_main(["export", str(lora_dpo), "--out", str(tmp_path / "fp8"), "--merge-lora", "--format", "fp8",
                     "--quiet"]) == 0  # fmt: skip


def test_full_weight_dpo_gradients_equal_a_single_process_reference(full_dpo):
    """Pair-level global normalization (+ RPO token normalization) across 2 ranks x 2 accumulation steps."""
    _, checks = full_dpo
    first = checks["first_step"]
    assert checks["reference_kind"] == "precomputed" and checks["status"] == "finished"
    assert len({p for p, _ in first["pairs_per_micro"]}) > 1  # micro-batches hold different numbers of pairs
    assert first["loss"] == pytest.approx(first["ref_loss"], rel=1e-5)
    assert first["grad_norm"] == pytest.approx(first["ref_norm"], rel=1e-4)
    assert first["max_rel_err"] < 1e-4
    assert first["mean_of_means_rel_diff"] > 1e-2  # the mean-of-means bug would be visible here
    assert (
        abs(first["extra"]["dpo_loss"] - math.log(2)) < 1e-4 and abs(first["extra"]["reward_margin"]) < 1e-4
    )


def test_full_weight_reference_is_stored_and_reused_on_resume(full_dpo, tmp_path, pref_dataset, launcher):
    from safetensors.torch import load_file

    run_dir, _ = full_dpo
    ref = load_file(run_dir / "reference" / "train.safetensors")
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    assert ref["logps"].shape == (2 * manifest["splits"]["train"]["num_pairs"],) and (ref["logps"] < 0).all()
    assert (run_dir / "reference" / "eval.safetensors").is_file() and (
        run_dir / "reference" / "meta.json"
    ).is_file()
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    straight = steps(run)
    args = [f"output_dir={run}", f"data.path={pref_dataset}", *FULL,
            f"checkpoint.resume={run / 'checkpoints' / 'step-00000002'}"]  # fmt: skip
    log = tmp_path / "resume.log"
    assert launcher.run(dpo_cmd(*args), log) == 0, launcher.tail(log)
    text = log.read_text()
    assert "reference log-probs: reusing" in text and "reference log-probs: train split" not in text
    after = steps(run)
    assert [after[s]["loss"] for s in (3, 4)] == [straight[s]["loss"] for s in (3, 4)]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as consolidate

    a, b = consolidate(str(latest(run)), tag="ds"), consolidate(str(latest(run_dir)), tag="ds")
    assert latest(run).name == "step-00000004" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # 2 + resume + 2 == 4 straight, bit for bit


def test_objective_and_dataset_kind_mismatch_is_refused(pref_dataset, tmp_path, launcher):
    cmd = dpo_cmd(f"output_dir={tmp_path / 'run'}", f"data.path={pref_dataset}", "objective=sft", nproc=1)
    out = subprocess.run(
        cmd, cwd=REPO, env=launcher.env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode != 0 and "holds preference pairs (kind: preference)" in out.stderr
    assert not (tmp_path / "run" / "run.yaml").exists()
