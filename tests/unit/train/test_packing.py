"""A packed row trains exactly like its samples run one by one: same loss, same gradients.

Real samples (rendered with the Hermes template and tokenizer) are packed into one row and into one
flattened micro-batch of two rows; the trainer's loss (:func:`train.loss.micro_ce_sum`) and gradients
must equal those of each sample run alone, for SDPA and eager attention on CPU (flash-attention varlen
on GPU: tests/integration/test_train_gpu.py). The last test shows the guard has teeth: transformers
turns its packed-sequence masking off when a KV cache is active, which is why the trainer always passes
``use_cache=False`` and never an ``attention_mask``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from data_recipes.messages import conversation_from_openai
from data_recipes.render import RenderOptions, render
from train.data import collate
from train.loss import micro_ce_sum
from train.model import preset_config

SAMPLES = Path(__file__).resolve().parents[3] / "data_recipes" / "samples"


def rendered_samples(tokenizer, n: int = 4):
    out = []
    for name in ("plain.jsonl", "reasoning.jsonl", "tool_use_openai.jsonl"):
        for i, line in enumerate((SAMPLES / name).read_text().splitlines()[:2]):
            raw = json.loads(line)
            if "messages" not in raw:
                continue
            try:
                out.append(render(conversation_from_openai(raw, f"{name}:{i}"), tokenizer, RenderOptions()))
            except ValueError:
                continue
    assert len(out) >= n
    return out[:n]


def as_rows(groups):
    cols = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
    for group in groups:
        cols["input_ids"].append([t for s in group for t in s.input_ids])
        cols["labels"].append([t for s in group for t in s.labels])
        cols["position_ids"].append([p for s in group for p in range(len(s.input_ids))])
        cols["seq_lengths"].append([len(s.input_ids) for s in group])
    return Dataset.from_dict(cols)


def loss_and_grads(model, micro_batches):
    model.zero_grad()
    total = sum(mb.num_trained for mb in micro_batches)
    loss = sum(micro_ce_sum(model, mb) for mb in micro_batches) / total
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def tiny_model(attn: str, use_cache: bool = False):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        preset_config("tiny"), dtype=torch.float32, attn_implementation=attn
    )
    model.config.use_cache = use_cache
    return model.train()


@pytest.fixture(scope="module")
def samples(tokenizer):
    return rendered_samples(tokenizer)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_equal_separate_samples(samples, attn):
    model = tiny_model(attn)
    vocab = model.config.vocab_size
    separate = [collate(as_rows([[s]]), [0], vocab) for s in samples]
    one_row = [collate(as_rows([samples]), [0], vocab)]  # all samples packed in one row
    two_rows = [collate(as_rows([samples[:2], samples[2:]]), [0, 1], vocab)]  # 2 packed rows, flattened
    ref_loss, ref_grads = loss_and_grads(model, separate)
    for packed in (one_row, two_rows):
        loss, grads = loss_and_grads(model, packed)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_without_the_guard_samples_would_attend_to_each_other(samples):
    """transformers' default use_cache=True disables packed masking: the loss changes."""
    model = tiny_model("sdpa", use_cache=True)
    vocab = model.config.vocab_size
    separate = [collate(as_rows([[s]]), [0], vocab) for s in samples]
    packed = collate(as_rows([samples]), [0], vocab)
    with torch.no_grad():
        ref = sum(micro_ce_sum(model, mb) for mb in separate)
        out = model(
            input_ids=packed.input_ids, position_ids=packed.position_ids, logits_to_keep=packed.target_index
        )
        leaky = torch.nn.functional.cross_entropy(out.logits[0], packed.targets, reduction="sum")
        guarded = micro_ce_sum(model, packed)  # the trainer's call passes use_cache=False
    assert not torch.allclose(leaky, ref, rtol=1e-4)
    torch.testing.assert_close(guarded, ref, rtol=1e-6, atol=1e-5)
