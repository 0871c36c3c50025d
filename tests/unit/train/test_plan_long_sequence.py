"""The planner's long-sequence terms (issue 9): tiled loss, sequence parallelism, tiled MLP."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.cli import main
from train.config import load_train_config
from train.plan import memory_plans, model_shape

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shape_70b():
    return model_shape(load_train_config(REPO / "configs" / "llama-3.1-70b-full.yaml"))[0]


def test_each_setting_shrinks_its_own_term(shape_70b):
    base = memory_plans(shape_70b, 64, 8, 32768, 1, True, 1.0)[0]
    tiled = memory_plans(shape_70b, 64, 8, 32768, 1, True, 1.0, tile_tokens=2048)[0]
    sp2 = memory_plans(shape_70b, 64, 8, 32768, 1, True, 1.0, sp=2)[0]
    mlp = memory_plans(shape_70b, 64, 8, 32768, 1, True, 1.0, tiled_mlp=True)[0]
    assert base.logits == 32768 * 128_256 * 10 and tiled.logits == 2048 * 128_256 * 10
    assert tiled.activations == base.activations
    assert sp2.activations == pytest.approx(base.activations / 2) and sp2.logits == pytest.approx(
        base.logits / 2
    )
    assert base.activations - mlp.activations == (32768 - 8192) * 4 * 28672 * 2  # one MLP tile of d tokens
    assert (sp2.params, sp2.optimizer) == (base.params, base.optimizer)  # ZeRO-3 still over all 64 GPUs


def test_shipped_70b_plans(capsys):
    full = REPO / "configs" / "llama-3.1-70b-full.yaml"
    assert main(["plan", str(full), "--nodes", "8", "--trained-fraction", "1", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "logits (one loss shard)" in out and "21.0" not in out and "VERDICT: FITS: 57.6 GB" in out
    assert "tiled loss saves 18.4 GB per GPU" in out
    lc = REPO / "configs" / "llama-3.1-70b-length-control.yaml"
    assert main(["plan", str(lc), "--nodes", "8", "--trained-fraction", "1", "--strict"]) == 0
    out = capsys.readouterr().out
    assert "micro-batch 1 x 32,768 tokens" in out and "sequence_parallel 2 (data-parallel 32)" in out
    assert "this config uses: ZeRO-3 (distributed.deepspeed=zero3)" in out and "VERDICT: FITS" in out
    # SP 1 is the next smaller setting and does not fit: SP 2 is the smallest that does
    assert (
        main(["plan", str(lc), "distributed.sequence_parallel=1", "--nodes", "8", "--trained-fraction", "1"])
        == 0
    )
    assert "VERDICT: DOES NOT FIT" in capsys.readouterr().out
