"""Export real ZeRO-3 checkpoints (2-rank CPU DeepSpeed): BF16, FP8, LoRA adapter / merged, verify, bad input.

Runs come from the trainer's session fixtures (``trained_run``, ``lora_run``) when they exist, else from
``tests/dist/make_zero3_run.py``; the LoRA run with its frozen base *inside* the checkpoint always comes
from that script (the trainer saves LoRA runs without the frozen base by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.cli import main as cli_main
from train.export import export_checkpoint, verify_folder
from train.export.reading.tensors import read_safetensors_folder
from train.launch import local_torchrun

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MAKE_RUN = REPO / "tests" / "dist" / "make_zero3_run.py"


def make_run(out: Path, *extra: str) -> Path:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        local_torchrun([str(MAKE_RUN), "--out", str(out), *extra]),
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _trainer_run(request, name: str) -> Path | None:
    try:
        value = request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None
    return Path(getattr(value, "run_dir", value))


@pytest.fixture(scope="module")
def full_run(request, tmp_path_factory) -> Path:
    return _trainer_run(request, "trained_run") or make_run(tmp_path_factory.mktemp("z3") / "full")


@pytest.fixture(scope="module")
def lora_run(request, tmp_path_factory) -> Path:
    run = _trainer_run(request, "lora_run")
    return run or make_run(tmp_path_factory.mktemp("z3") / "lora", "--lora", "--exclude-frozen")


@pytest.fixture(scope="module")
def lora_frozen_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("z3") / "lora_frozen", "--lora")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def bf16_export(full_run, outputs):
    return export_checkpoint(full_run, outputs / "bf16", "bf16", max_shard_size="10MB", progress=False)


def _step(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _zero_to_fp32(run: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(_step(run)))


def _unwrap(name: str) -> str:
    return name.removeprefix("module.")


def test_bf16_export_equals_deepspeed_consolidation(full_run, bf16_export):
    out = bf16_export.out_dir
    assert bf16_export.ok, bf16_export.verify.table()
    assert bf16_export.num_shards > 1 and (out / "model.safetensors.index.json").is_file()
    ours = read_safetensors_folder(out)
    ref = {_unwrap(k): v for k, v in _zero_to_fp32(full_run).items()}
    ref = {k: v for k, v in ref.items() if k in ours or not k.endswith("lm_head.weight")}
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(ours[name].materialize(), tensor.to(torch.bfloat16)), name
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["architectures"] == ["LlamaForCausalLM"]
    tok = full_run / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (tok / name).read_bytes(), name
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [128009, 128001] and gen["temperature"] == 0.6
    card = (out / "README.md").read_text()
    assert "--tool-call-parser hermes" in card and "run.yaml" in card and "| template_parity | PASS" in card
    assert "| round_trip | PASS" in card and "--reasoning-parser qwen3" in card
    checks = {c.name: c.status for c in bf16_export.verify.checks}
    assert set(checks.values()) == {"pass"}, checks


def test_fp8_from_checkpoint_equals_fp8_from_bf16_export(full_run, bf16_export, outputs):
    a = export_checkpoint(full_run, outputs / "fp8-ckpt", "fp8", verify=False, progress=False)
    b = export_checkpoint(
        bf16_export.out_dir, outputs / "fp8-bf16", "fp8", max_shard_size="10MB", progress=False
    )
    assert b.ok, b.verify.table()  # verified against the BF16 folder it came from
    qa, qb = read_safetensors_folder(a.out_dir), read_safetensors_folder(b.out_dir)
    assert set(qa) == set(qb)
    for name in qa:
        x, y = qa[name].materialize(), qb[name].materialize()
        assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), name
    report = verify_folder(a.out_dir, reference=full_run)
    assert report.ok, report.table()
    logits = report.check("logits").metrics["vs_bf16"]
    assert logits["rel_err"] < 0.05
    assert report.check("weights").metrics["fp8_weight_rel_err"] < 0.04


def _peft_reference(run: Path) -> dict[str, torch.Tensor]:
    """Independent merge: transformers base + PEFT, loaded with DeepSpeed's consolidated weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    step = _step(run)
    adapter_cfg = json.loads((step / "adapter_config.json").read_text())
    state = {_unwrap(k): v for k, v in _zero_to_fp32(run).items()}
    config = AutoConfig.for_model(**json.loads((step / "model_config.json").read_text()))
    base_dir = run / "base_model"
    if any("base_layer" in k for k in state):
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    keep = {
        "r",
        "lora_alpha",
        "target_modules",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "modules_to_save",
    }
    peft = get_peft_model(model, LoraConfig(**{k: v for k, v in adapter_cfg.items() if k in keep}))
    missing, unexpected = peft.load_state_dict(state, strict=False)
    assert not unexpected and all("lora" not in k for k in missing)
    return {k: v.detach().clone() for k, v in peft.merge_and_unload().state_dict().items()}


@pytest.mark.parametrize("which", ["lora_run", "lora_frozen_run"])
def test_lora_adapter_and_merge(which, request, outputs):
    run = request.getfixturevalue(which)
    adapter = export_checkpoint(run, outputs / f"{which}-adapter", progress=False)
    assert adapter.format == "lora-adapter" and adapter.ok, adapter.verify.table()
    assert adapter.verify.check("load").status == "pass" and adapter.verify.check("logits").status == "pass"
    assert sorted(p.name for p in adapter.out_dir.glob("adapter_*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    merged = export_checkpoint(
        run, outputs / f"{which}-merged", merge_lora=True, progress=False, verify=which == "lora_run"
    )
    assert merged.format == "bf16" and merged.ok, merged.verify.table()
    ours = read_safetensors_folder(merged.out_dir)
    want = _peft_reference(run)
    want = {k: v for k, v in want.items() if k in ours}
    assert set(ours) == set(want)
    for name, tensor in want.items():
        assert torch.equal(ours[name].materialize(), tensor.to(torch.bfloat16)), name


def test_verify_cli_passes_and_catches_tampering(full_run, bf16_export, tmp_path, capsys):
    assert cli_main(["verify", str(bf16_export.out_dir), "--reference", str(full_run)]) == 0
    assert "result: PASS" in capsys.readouterr().out
    bad = tmp_path / "bad"
    shutil.copytree(bf16_export.out_dir, bad)
    (bad / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    shard = sorted(bad.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-2] ^= 0x40  # one bf16 value in the last tensor of the last shard
    shard.write_bytes(bytes(data))
    assert cli_main(["verify", str(bad), "--reference", str(full_run), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["template"] == "fail" and status["weights"] == "fail" and status["logits"] == "fail"


def test_verify_catches_a_template_that_keeps_ids_but_loses_the_training_mask(
    full_run, bf16_export, tmp_path, capsys
):
    bad = tmp_path / "unmarked"
    shutil.copytree(bf16_export.out_dir, bad)
    template = (bad / "chat_template.jinja").read_text(encoding="utf-8")
    unmarked = template.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    assert unmarked != template
    (bad / "chat_template.jinja").write_text(unmarked, encoding="utf-8")
    config = json.loads((bad / "tokenizer_config.json").read_text())
    (bad / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": unmarked}))
    assert cli_main(["verify", str(bad), "--reference", str(full_run), "--json"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["template_parity"]["status"] == "fail"
    assert "assistant mask differs" in checks["template_parity"]["detail"]


# --- bad input ----------------------------------------------------------------------------------


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("base_model"))
    return dest


def test_output_folder_must_be_empty_unless_overwrite(full_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli_main(["export", str(full_run), "--out", str(out), "--no-verify", "--quiet"]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    args = ["export", str(full_run), "--out", str(out), "--no-verify", "--quiet", "--overwrite", "--json"]
    assert cli_main(args) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    result = json.loads(capsys.readouterr().out)
    assert result["out_dir"] == str(out.resolve()) and result["format"] == "bf16" and result["verify"] is None
    with pytest.raises(ValueError, match="would replace the source"):
        export_checkpoint(full_run, _step(full_run).parent, overwrite=True, verify=False, progress=False)


def test_unknown_format(full_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli_main(["export", str(full_run), "--out", str(tmp_path / "o"), "--format", "int4"])
    assert err.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown format 'int4'; choose one of: bf16, fp8"):
        export_checkpoint(full_run, tmp_path / "o", "int4")


def test_incomplete_checkpoints_are_refused(full_run, tmp_path):
    run = _copy_run(full_run, tmp_path / "run")
    ds = _step(run) / "ds"
    optim = sorted(ds.glob("*optim_states.pt"))
    optim[-1].unlink()
    with pytest.raises(
        ValueError, match=r"expected \*_optim_states.pt files for ranks 0\.\.1, found ranks \[0\]"
    ):
        export_checkpoint(run, tmp_path / "o", verify=False, progress=False)
    shutil.copy(next((_step(full_run) / "ds").glob("*rank_1*optim_states.pt")), optim[-1])
    model_states = sorted(ds.glob("*model_states.pt"))[0]
    model_states.write_bytes(model_states.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable checkpoint file"):
        export_checkpoint(run, tmp_path / "o", verify=False, progress=False)
    (_step(run) / "hermes_state.json").unlink()
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        export_checkpoint(_step(run), tmp_path / "o", verify=False, progress=False)
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_model_config_is_refused(full_run, tmp_path):
    config = json.loads((_step(full_run) / "model_config.json").read_text())
    config["intermediate_size"] *= 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"does not match the model config .*mlp\.(gate|up|down)_proj\.weight: checkpoint"
    ):
        export_checkpoint(
            full_run, tmp_path / "o", model_config=tmp_path / "config.json", verify=False, progress=False
        )


def test_lora_merge_against_a_base_of_other_shapes(lora_run, tmp_path):
    from tests.export_fixtures import llama_config, save_llama

    config = json.loads((_step(lora_run) / "model_config.json").read_text())
    wrong = save_llama(
        tmp_path / "wrong_base",
        llama_config(
            hidden_size=config["hidden_size"],
            intermediate_size=2 * config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
        ),
        with_tokenizer=False,
    )
    run = _copy_run(lora_run, tmp_path / "run")
    state = json.loads((_step(run) / "hermes_state.json").read_text())
    state["base_model"] = str(wrong)
    (_step(run) / "hermes_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"base model .*wrong_base does not match"):
        export_checkpoint(run, tmp_path / "o", merge_lora=True, verify=False, progress=False)


def test_fp8_names_layers_that_cannot_be_quantized(tmp_path, capsys):
    from tests.export_fixtures import llama_config, save_llama

    src = save_llama(tmp_path / "odd", llama_config(intermediate_size=100), with_tokenizer=False)
    code = cli_main(["export", str(src), "--out", str(tmp_path / "o"), "--format", "fp8", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "model.layers.0.mlp.gate_proj [100, 64]" in err and "--fp8-ignore" in err
    assert not (tmp_path / "o").exists()
    args = ["export", str(src), "--out", str(tmp_path / "o"), "--format", "fp8", "--quiet", "--no-verify"]
    code = cli_main([*args, "--fp8-ignore", "re:.*mlp.*"])
    assert code == 0
    ignore = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]["ignore"]
    assert ignore == ["lm_head", "re:.*mlp.*"]


def test_disk_full_mid_write_leaves_no_folder(bf16_export, tmp_path):
    """A real write failure: a file-size limit (RLIMIT_FSIZE) below the shard size, in a subprocess."""
    out = tmp_path / "out"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (6_000_000, 6_000_000))\n"
        "from train.cli import main\n"
        f"sys.exit(main(['export', {str(bf16_export.out_dir)!r}, '--out', {str(out)!r}, '--format', 'fp8',"
        " '--max-shard-size', '20MB', '--no-verify', '--quiet']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "failed" in proc.stderr and "nothing was left" in proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
