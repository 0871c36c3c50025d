"""Train configs: every shipped YAML loads and validates; bad input fails early with the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_recipes.config_io import ConfigError
from train.cli_train import settings_text
from train.config import BatchConfig, TrainConfig, batch_layout, load_train_config
from train.ds_config import build_ds_config, load_template, offloads_optimizer, offloads_params

REPO = Path(__file__).resolve().parents[3]
TRAIN_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
DS_TEMPLATES = sorted((REPO / "configs" / "deepspeed").glob("*.json"))
HIDDEN = {"tiny": 64, "llama-3.1-8b": 4096, "llama-3.1-70b": 8192}


def test_the_expected_configs_ship():
    names = {p.name for p in TRAIN_CONFIGS}
    assert {
        "tiny-cpu.yaml",
        "llama-3.1-8b-full.yaml",
        "llama-3.1-70b-full.yaml",
        "llama-3.1-70b-lora.yaml",
        "llama-3.1-70b-length-control.yaml",
    } <= names
    assert {p.name for p in DS_TEMPLATES} >= {"zero3.json", "zero3-offload.json"}


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path):
    text = path.read_text()
    assert text.startswith("#"), "each config opens with a comment on its purpose"
    assert "hermes-sft" in text.split("\n\n")[0] or "sbatch" in text, "the header gives the launch command"
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig)
    template = load_template(cfg.distributed.deepspeed, path.parent)
    world = 2 if cfg.model.preset == "tiny" else 64
    ds = build_ds_config(
        template,
        cfg,
        batch_layout(cfg.batch, world),
        HIDDEN[cfg.model.preset],
        bf16=cfg.model.dtype == "bfloat16",
    )
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_batch_size"] == cfg.batch.global_batch_size
    assert "auto" not in json.dumps(ds)
    assert settings_text(cfg, str(path), world).startswith("config")


def test_70b_config_is_the_hermes4_recipe():
    cfg = load_train_config(REPO / "configs" / "llama-3.1-70b-full.yaml")
    assert cfg.model.preset == "llama-3.1-70b" and not cfg.lora.enabled
    assert cfg.data.max_seq_len == 16384
    assert cfg.batch.global_batch_size == 384
    assert cfg.optim.lr == 1e-5
    assert (cfg.schedule.kind, cfg.schedule.warmup_steps, cfg.schedule.steps) == ("cosine", 300, 9000)
    lora = load_train_config(REPO / "configs" / "llama-3.1-70b-lora.yaml").lora
    assert lora.enabled and set(lora.target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_ds_templates_fill_auto_values_and_torch_adam():
    cfg = load_train_config(REPO / "configs" / "tiny-cpu.yaml")
    layout = batch_layout(cfg.batch, 2)
    ds = build_ds_config(load_template("zero3"), cfg, layout, 64, bf16=False)
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (4, 1, 2)
    assert ds["optimizer"]["params"]["torch_adam"] is True  # no fused_adam JIT build
    assert ds["optimizer"]["params"]["lr"] == cfg.optim.lr and ds["bf16"]["enabled"] is False
    off = build_ds_config(load_template("zero3-offload"), cfg, layout, 64, bf16=True)
    assert offloads_optimizer(off) and offloads_params(off)
    assert off["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam for offloaded states


def test_ds_template_disagreeing_with_the_train_config_is_refused(tmp_path):
    cfg = load_train_config(REPO / "configs" / "tiny-cpu.yaml")
    template = load_template("zero3") | {"train_micro_batch_size_per_gpu": 4}
    with pytest.raises(
        ValueError, match='train_micro_batch_size_per_gpu=4 but the train config implies 1; set it to "auto"'
    ):
        build_ds_config(template, cfg, batch_layout(cfg.batch, 2), 64, bf16=False)
    stage2 = load_template("zero3") | {"zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match="this trainer is ZeRO-3"):
        build_ds_config(stage2, cfg, batch_layout(cfg.batch, 2), 64, bf16=False)
    with pytest.raises(ValueError, match="no such template"):
        load_template("zero4")


def test_overrides_unknown_and_missing_keys(tmp_path):
    base = REPO / "configs" / "tiny-cpu.yaml"
    cfg = load_train_config(base, ["optim.lr=1e-5", "schedule.steps=50", "lora.enabled=true"])
    assert cfg.optim.lr == 1e-5 and cfg.schedule.steps == 50 and cfg.lora.enabled
    with pytest.raises(ConfigError, match=r"optim.*unknown key\(s\) \['learning_rate'\]"):
        load_train_config(base, ["optim.learning_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got 'fast'"):
        load_train_config(base, ["optim.lr=fast"])
    broken = tmp_path / "x.yaml"
    broken.write_text("output_dir: out\nmodel: {preset: tiny}\nschedule: {steps: 3}\n")
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load_train_config(broken)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.warmup_steps=20"], r"warmup_steps=20 must be in \[0, steps=20\)"),
        (["model.preset=null"], "set model.path"),
        (["model.path=/x", "model.overrides={num_hidden_layers: 1}"], "config-built preset only"),
        (["batch.global_batch_size=5", "batch.micro_batch_size=2"], "not a multiple"),
        (["optim.betas=[0.9]"], "two numbers"),
        (["lora.r=0"], "r must be >= 1"),
        (["checkpoint.keep_last=0"], "keep_last"),
    ],
)
def test_invalid_values_say_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(REPO / "configs" / "tiny-cpu.yaml", overrides)


def test_batch_split_must_divide_the_global_batch():
    layout = batch_layout(BatchConfig(global_batch_size=384, micro_batch_size=1), 64)
    assert layout.grad_accum == 6 and layout.rows_per_rank == 6
    with pytest.raises(
        ValueError,
        match=r"not divisible by micro_batch_size \(2\) x world size \(48\) = 96; use a multiple of 96 \(e.g. 384 or 480\)",
    ):
        batch_layout(BatchConfig(global_batch_size=400, micro_batch_size=2), 48)


def test_check_prints_output_dir_for_the_slurm_script():
    cfg = load_train_config(REPO / "configs" / "llama-3.1-70b-full.yaml")
    text = settings_text(cfg, "configs/llama-3.1-70b-full.yaml", 128)
    assert "output_dir = /shared/runs/llama-3.1-70b-hermes4" in text.splitlines()
    assert "grad_accum = 3 (world size 128)" in text
