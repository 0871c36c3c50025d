"""The trainer for real: 2 ranks, DeepSpeed ZeRO-3 over gloo, the tiny Llama, the bundled sample data.

Launches (each ~15-25 s): the checked full run (``trained_run``), a SIGTERM'd run, a resume killed in the
middle of its save, the final resume, a LoRA run and a LoRA resume, a resume past a corrupt shard into
a full disk, a resume refusing a hostile pickle, and two one-rank refusals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def consolidated(ckpt: Path, exclude_frozen: bool = False) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(ckpt), tag="ds", exclude_frozen_parameters=exclude_frozen
    )


def latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


# ------------------------------------------------------------------------------------- the checked run


def test_parameters_are_partitioned(trained_run_checks):
    for part in trained_run_checks["partitions"]:
        assert part["world"] == 2 and part["unpartitioned_live"] == 0
        assert part["local"] == part["total"] // 2  # each rank holds exactly half of every tensor


def test_first_step_equals_single_process_reference(trained_run_checks):
    """Global token normalization across 2 ranks x 2 accumulation steps, checked on real gradients."""
    first = trained_run_checks["first_step"]
    assert first["loss"] == pytest.approx(first["ref_loss"], rel=1e-6)
    assert first["grad_norm"] == pytest.approx(first["ref_norm"], rel=1e-5)
    assert first["max_rel_err"] < 1e-5
    assert first["mean_of_means_rel_diff"] > 1e-2  # the mean-of-means bug would be visible here


def test_checkpoint_consolidates_to_live_weights(trained_run_checks):
    c = trained_run_checks["consolidation"]
    assert c["missing"] == [] and c["unexpected"] == [] and c["num_tensors"] == 21
    assert c["max_abs_diff"] == 0.0


def test_nonfinite_loss_stops_every_rank_before_the_update(trained_run_checks):
    nan = trained_run_checks["nonfinite"]
    assert nan["raised"]
    assert f"non-finite loss at step {nan['step']} in train rows {nan['expected_rows']}" in nan["message"]
    assert trained_run_checks["after_nonfinite"]["max_abs_diff"] == 0.0  # weights untouched


def test_loss_decreases_and_run_dir_layout(trained_run):
    loss = losses(trained_run)
    assert sorted(loss) == [1, 2, 3, 4, 5, 6]
    assert loss[6] < loss[1] - 0.3
    records = metrics(trained_run)
    step = next(r for r in records if r["step"] == 6 and "loss" in r)
    for key in ("lr", "grad_norm", "tokens_per_sec_per_device", "trained_fraction", "mfu"):
        assert step[key] is not None and step[key] > 0
    assert any("eval_loss" in r for r in records)
    for name in (
        "run.yaml",
        "model_config.json",
        "data_manifest.json",
        "tokenizer/tokenizer.json",
        "tokenizer/chat_template.jinja",
        "loss.png",
        "summary.json",
    ):
        assert (trained_run / name).is_file(), name
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 6
    assert latest(trained_run).name == "step-00000006"
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == [
        "latest",
        "step-00000003",
        "step-00000006",
    ]
    ckpt = latest(trained_run)
    assert (ckpt / "latest").read_text().strip() == "ds"
    assert sorted(p.name for p in (ckpt / "ds").iterdir()) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    state = json.loads((ckpt / "hermes_state.json").read_text())
    assert state["step"] == 6 and state["rows_consumed"] == 24 and state["world_size"] == 2
    assert state["lora"] is None and state["model_source"] == {"preset": "tiny"}
    assert json.loads((ckpt / "model_config.json").read_text())["vocab_size"] == 128256
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank-00000.json", "rank-00001.json"]


# ------------------------------------------------------------------- SIGTERM, a kill mid-save, resume


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory, sample_dataset, launcher) -> dict:
    """The trained_run config, stopped by SIGTERM, then resumed with a kill inside the final save, then
    resumed to the end."""
    root = tmp_path_factory.mktemp("interrupted")
    run_dir = root / "run"
    args = [f"output_dir={run_dir}", f"data.path={sample_dataset}", *launcher.full_overrides]
    out: dict = {"run_dir": run_dir}
    log = root / "sigterm.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            launcher.cmd(*args), cwd=launcher.repo, env=launcher.env(), stdout=f, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").is_file() and losses(run_dir):
                proc.send_signal(signal.SIGTERM)  # the launcher forwards it to both ranks
                break
            time.sleep(0.05)
        out["sigterm_rc"] = proc.wait(timeout=300)
    out["sigterm_log"] = log.read_text(errors="replace")
    out["stopped_at"] = json.loads((latest(run_dir) / "hermes_state.json").read_text())["step"]
    # the resumed run passes the periodic save at step 3 before it is killed saving step 6
    out["last_good"] = max(out["stopped_at"], 3)
    out["summary_after_sigterm"] = json.loads((run_dir / "summary.json").read_text())

    fault = launcher.env(HERMES_SFT_FAULT_KILL_IN_SAVE="6")
    out["killed_rc"] = launcher.run(launcher.cmd(*args), root / "killed.log", fault)
    out["latest_after_kill"] = latest(run_dir).name
    out["leftovers_after_kill"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    out["resume_rc"] = launcher.run(launcher.cmd(*args), root / "resume.log")
    out["resume_log"] = launcher.tail(root / "resume.log", 200)
    return out


def test_sigterm_saves_a_checkpoint_and_exits_zero(interrupted_runs):
    r = interrupted_runs
    assert r["sigterm_rc"] == 0, r["sigterm_log"][-3000:]
    assert 1 <= r["stopped_at"] < 6, "SIGTERM arrived after the run had finished; the test lost the race"
    assert r["summary_after_sigterm"]["status"] == "stopped"
    assert "stop requested (SIGTERM)" in r["sigterm_log"]


def test_kill_during_save_keeps_the_previous_checkpoint(interrupted_runs):
    r = interrupted_runs
    assert r["killed_rc"] != 0
    assert r["latest_after_kill"] == f"step-{r['last_good']:08d}"
    assert ".tmp-step-00000006" in r["leftovers_after_kill"]  # the half-written save, ignored
    assert "step-00000006" not in r["leftovers_after_kill"]


def test_resume_equals_straight_run(interrupted_runs, trained_run):
    r = interrupted_runs
    assert r["resume_rc"] == 0, r["resume_log"]
    assert "removed incomplete checkpoint(s)" in r["resume_log"]
    resumed, straight = losses(r["run_dir"]), losses(trained_run)
    assert resumed == straight  # steps 1..k from the stopped run, k+1..6 from the resumed one, bit for bit
    a, b = consolidated(latest(r["run_dir"])), consolidated(latest(trained_run))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((r["run_dir"] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from"].endswith(f"step-{r['last_good']:08d}")


# ----------------------------------------------------------------------------------------------- LoRA


def test_lora_adapter_is_non_empty_and_loads_with_peft(lora_run):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ckpt = latest(lora_run)
    assert ckpt.name == "step-00000004"
    state = json.loads((ckpt / "hermes_state.json").read_text())
    assert state["lora"]["r"] == 8 and state["lora"]["frozen_in_checkpoint"] is False
    assert Path(state["base_model"]) == lora_run / "base_model"
    adapter = load_file(ckpt / "adapter_model.safetensors")
    assert len(adapter) == 2 * 7 * 2  # layers x target modules x (A, B)
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = adapter["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]
    assert a.shape == (8, 64) and b.shape == (64, 8)
    assert all(t.numel() > 0 for t in adapter.values())
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # trained away from zero
    # the adapter equals DeepSpeed's own consolidation of the trainable (fp32) parameters
    zero = consolidated(ckpt, exclude_frozen=True)
    assert len(zero) == len(adapter)
    for key, value in zero.items():
        assert torch.equal(adapter[key.replace(".default", "")], value)
    base = AutoModelForCausalLM.from_pretrained(lora_run / "base_model", dtype=torch.float32)
    ids = torch.tensor([[128000, 128006, 882, 128007, 271, 9906, 128009]])
    base_logits = base(ids).logits
    model = PeftModel.from_pretrained(base, ckpt)
    assert not torch.allclose(model(ids).logits, base_logits)


def test_lora_resume_restores_base_adapter_and_rng(lora_run, tmp_path, sample_dataset, launcher):
    """Resume the LoRA run from step 2 (dropout 0.1: the RNG matters) and reach step 4's adapter exactly."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    shutil.copytree(run / "base_model", tmp_path / "base_copy")
    expected = load_file(latest(run) / "adapter_model.safetensors")
    straight = losses(run)
    args = [
        f"output_dir={run}",
        f"data.path={sample_dataset}",
        *launcher.lora_overrides,
        f"checkpoint.resume={run / 'checkpoints' / 'step-00000002'}",
    ]
    log = tmp_path / "resume.log"
    assert launcher.run(launcher.cmd(*args), log) == 0, launcher.tail(log)
    assert "resumed from" in log.read_text()
    resumed = load_file(latest(run) / "adapter_model.safetensors")
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert {s: losses(run)[s] for s in (3, 4)} == {s: straight[s] for s in (3, 4)}
    for name in ("model.safetensors", "config.json"):  # the frozen base was read back, not rewritten
        assert (run / "base_model" / name).read_bytes() == (tmp_path / "base_copy" / name).read_bytes()


# ------------------------------------------------------------------------------------------ refusals


def test_refuses_an_output_dir_holding_another_models_checkpoints(
    trained_run, tmp_path, sample_dataset, launcher
):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000006").mkdir(parents=True)
    shutil.copy(latest(trained_run) / "hermes_state.json", run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000006\n")
    cmd = launcher.cmd(
        f"output_dir={run}", f"data.path={sample_dataset}", "model.overrides={num_hidden_layers: 1}", nproc=1
    )
    out = subprocess.run(
        cmd, cwd=launcher.repo, env=launcher.env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "was written for a different model" in out.stderr
    assert not (run / "run.yaml").exists()  # refused before writing anything


# ----------------------------------------------------------------------------- integrity and safety


def _flip_bit(path: Path, offset: int = -200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_corrupt_shard_falls_back_and_a_full_disk_is_reported(
    trained_run, tmp_path, sample_dataset, launcher
):
    """One launch, two faults: a flipped bit in the newest checkpoint's ZeRO-3 shard (resume falls back to
    the previous checkpoint, saying so, and still reproduces the straight run) and a full disk while saving
    the final checkpoint (a clear line, the partial folder removed, the previous checkpoint intact)."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    bad = run / "checkpoints" / "step-00000006" / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    _flip_bit(bad)
    args = [f"output_dir={run}", f"data.path={sample_dataset}", *launcher.full_overrides]
    log = tmp_path / "resume.log"
    rc = launcher.run(launcher.cmd(*args), log, launcher.env(HERMES_SFT_FAULT_ENOSPC_IN_SAVE="6"))
    text = log.read_text(errors="replace")
    assert rc != 0, launcher.tail(log)
    assert f"step-00000006 is corrupt ({bad}: checksum mismatch" in text
    assert "falling back to the previous complete checkpoint" in text
    assert "resumed from" in text and "step-00000003 at step 3" in text
    assert {s: losses(run)[s] for s in (4, 5, 6)} == {s: losses(trained_run)[s] for s in (4, 5, 6)}
    assert re.search(
        r"error: no space left on /\S* while writing checkpoint \.tmp-step-00000006, needs ~", text
    )
    assert "the partial files were removed" in text and "Traceback" not in text  # one line per rank
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step-00000003",
        "step-00000006",
    ]


def test_resume_never_runs_a_pickled_payload(trained_run, tmp_path, sample_dataset, launcher):
    """A model-states file whose pickle calls os.system, with its checksum updated to match (an attacker
    who can write the folder can rewrite hermes_state.json too): resume refuses it, nothing runs."""
    from train.checksums import file_digest

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    step = run / "checkpoints" / "step-00000006"
    target = step / "ds" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    state = torch.load(target, weights_only=False)
    state["payload"] = _Payload(str(marker))
    torch.save(state, target)
    hermes = json.loads((step / "hermes_state.json").read_text())
    hermes["checksums"]["files"]["ds/zero_pp_rank_0_mp_rank_00_model_states.pt"] = file_digest(target)
    (step / "hermes_state.json").write_text(json.dumps(hermes))
    args = [f"output_dir={run}", f"data.path={sample_dataset}", *launcher.full_overrides, "schedule.steps=7"]
    log = tmp_path / "resume.log"
    assert launcher.run(launcher.cmd(*args), log) != 0
    assert "the pickle names ['posix.system'], which a DeepSpeed checkpoint never holds" in log.read_text()
    assert not marker.exists()


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_second_run_on_a_live_runs_output_dir_is_refused(tmp_path, sample_dataset, launcher):
    from train.run_lock import RunLock

    run = tmp_path / "run"
    live = RunLock(run)
    live.acquire()  # this test process plays the live run
    try:
        cmd = launcher.cmd(f"output_dir={run}", f"data.path={sample_dataset}", nproc=1)
        out = subprocess.run(
            cmd,
            cwd=launcher.repo,
            env=launcher.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        live.release()
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"output_dir {run} is in use by a live run (pid {os.getpid()} on" in out.stderr
    assert not (run / "run.yaml").exists() and not (run / "checkpoints").exists()
