"""The planner: exact parameter counts from the meta device, ZeRO-3 memory per GPU, clear verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.cli import main
from train.config import load_train_config
from train.plan import GB, memory_plans, model_shape

REPO = Path(__file__).resolve().parents[3]
CFG_70B = REPO / "configs" / "llama-3.1-70b-full.yaml"


@pytest.fixture(scope="module")
def shape_70b():
    return model_shape(load_train_config(CFG_70B))[0]


def test_llama31_parameter_counts(shape_70b):
    assert shape_70b.total == 70_553_706_496
    assert shape_70b.largest_tensor == 128_256 * 8192  # the embedding (and the untied LM head)
    assert (
        model_shape(load_train_config(REPO / "configs" / "llama-3.1-8b-full.yaml"))[0].total == 8_030_261_248
    )
    lora = model_shape(load_train_config(REPO / "configs" / "llama-3.1-70b-lora.yaml"))[0]
    per_layer = 64 * ((8192 + 8192) * 2 + (8192 + 1024) * 2 + (8192 + 28672) * 3)
    assert lora.trainable == 80 * per_layer


def test_zero3_model_states_match_deepspeeds_estimate(shape_70b):
    plan = memory_plans(shape_70b, 16, 8, 16384, 1, True, 1.0)[0]
    states = plan.params + plan.grads + plan.optimizer + plan.working_set
    # DeepSpeed's estimate_zero3_model_states_mem_needs: 18 N / G + 4 x largest layer = 83.6 GB
    assert states / GB == pytest.approx(18 * 70_553_706_496 / 16 / GB + 4 * 128_256 * 8192 / GB)
    assert states / GB == pytest.approx(83.6, abs=0.1)


def test_cli_says_clearly_when_it_does_not_fit(capsys):
    assert main(["plan", str(CFG_70B), "--nodes", "2", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "model: 70,553,706,496 parameters" in out
    assert "VERDICT: DOES NOT FIT" in out and "advice:" in out
    assert "tokens per step: 6,291,456" in out and "552.2 GFLOP per token" in out
    assert main(["plan", str(CFG_70B), "--nodes", "2", "--gpus-per-node", "8", "--strict"]) == 1
    capsys.readouterr()
    assert main(["plan", str(CFG_70B), "--nodes", "8", "--gpus-per-node", "8", "--strict"]) == 0
    assert "VERDICT: FITS" in capsys.readouterr().out
    lora = REPO / "configs" / "llama-3.1-70b-lora.yaml"
    assert main(["plan", str(lora), "--nodes", "1", "--gpus-per-node", "8", "--strict"]) == 0
