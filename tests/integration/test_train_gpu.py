"""GPU paths (skipped without CUDA): flash-attention varlen over packed rows, and a bf16 run.

On GPU the trainer picks ``flash_attention_2`` when flash_attn is installed: transformers derives the
varlen boundaries from ``position_ids`` of the flattened [1, T] micro-batch. These tests hold that path to
the same standard as the CPU one: a packed row's loss and gradients equal its samples run alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


def _flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _flash_attn(), reason="flash-attn is not installed")
def test_flash_attention_varlen_packed_equals_separate(tokenizer):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from data_recipes.messages import conversation_from_openai
    from data_recipes.render import RenderOptions, render
    from train.data import collate
    from train.loss import micro_ce_sum
    from train.model import preset_config

    lines = (REPO / "data_recipes" / "samples" / "reasoning.jsonl").read_text().splitlines()[:3]
    samples = [render(conversation_from_openai(json.loads(x)), tokenizer, RenderOptions()) for x in lines]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        preset_config("tiny"), dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    ).cuda()

    def rows(groups):
        return Dataset.from_dict(
            {
                "input_ids": [[t for s in g for t in s.input_ids] for g in groups],
                "labels": [[t for s in g for t in s.labels] for g in groups],
                "position_ids": [[p for s in g for p in range(len(s.input_ids))] for g in groups],
                "seq_lengths": [[len(s.input_ids) for s in g] for g in groups],
            }
        )

    def loss_grads(mbs):
        model.zero_grad()
        loss = sum(micro_ce_sum(model, mb) for mb in mbs) / sum(mb.num_trained for mb in mbs)
        loss.backward()
        return loss.float(), {n: p.grad.float() for n, p in model.named_parameters()}

    vocab = model.config.vocab_size
    ref_loss, ref = loss_grads([collate(rows([[s]]), [0], vocab) for s in samples])
    loss, grads = loss_grads([collate(rows([samples]), [0], vocab)])
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)  # bf16 accumulation order differs
    for name, g in grads.items():
        torch.testing.assert_close(g, ref[name], rtol=5e-2, atol=5e-3, msg=name)


def test_bf16_run_on_one_gpu(tmp_path, sample_dataset):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "train.cli",
        "train",
        str(REPO / "configs/tiny-cpu.yaml"),
        f"output_dir={run}",
        f"data.path={sample_dataset}",
        "model.dtype=auto",
        "model.attn_implementation=auto",
        "schedule.steps=4",
        "checkpoint.every_steps=0",
        "logging.progress=false",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert json.loads((run / "summary.json").read_text())["mfu"] is not None
