"""Packed attention backends (train/attention.py): the glue (sample boundaries from position_ids, head
layouts, GQA) against transformers' SDPA with its block-causal mask, on a tiny Llama, forward and backward.

varlen's kernel is CUDA-only, so here it runs through ``reference_varlen_kernel`` (the same contract,
sample by sample with SDPA); the kernel itself is checked by tests/integration/test_train_gpu.py and
bench/gpu_check.py on a GPU.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig

from train import attention
from train.attention import (
    cu_seqlens_from_position_ids,
    document_ids,
    register_backends,
    resolve_attention,
    sample_starts,
)

POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0]])


def test_sample_boundaries_from_position_ids():
    cu, longest = cu_seqlens_from_position_ids(POSITIONS)
    assert cu.tolist() == [0, 3, 5, 9, 10] and cu.dtype == torch.int32 and longest == 4
    assert document_ids(POSITIONS).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    # a break in the +1 run also starts a sample (transformers' rule), not only a 0
    assert sample_starts(torch.tensor([[5, 6, 7, 2, 3]])).tolist() == [0, 3]


def tiny_llama(attn: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=256,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=attn)


def loss_and_grads(model, ids, pos):
    model.zero_grad()
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def packed_row():
    gen = torch.Generator().manual_seed(3)
    lengths = [17, 5, 40, 1, 30]
    ids = torch.randint(0, 128, (1, sum(lengths)), generator=gen)
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids, pos


@pytest.fixture(scope="module")
def sdpa_reference(packed_row):
    return loss_and_grads(tiny_llama("sdpa"), *packed_row)


@pytest.mark.parametrize("name", ["varlen", "packed_sdpa"])
def test_backend_equals_sdpa_block_mask(name, packed_row, sdpa_reference, monkeypatch):
    register_backends()
    registered = {"varlen": attention.VARLEN, "flex": attention.FLEX, "packed_sdpa": attention.PACKED_SDPA}[
        name
    ]
    if name == "varlen":
        fn = functools.partial(attention.varlen_attention_forward, kernel=attention.reference_varlen_kernel)
        AttentionInterface.register("test_varlen_reference", fn)
        registered = "test_varlen_reference"
    loss, grads = loss_and_grads(tiny_llama(registered), *packed_row)
    ref_loss, ref_grads = sdpa_reference
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for key, g in ref_grads.items():
        torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6, msg=key)


def test_flex_forward_equals_sdpa_block_mask(packed_row):
    """FlexAttention has no backward on CPU: its document mask is checked on the forward here (and in
    bf16 forward + backward by bench/gpu_check.py on a GPU)."""
    register_backends()
    with torch.no_grad():
        ids, pos = packed_row
        flex = tiny_llama(attention.FLEX)(input_ids=ids, position_ids=pos, use_cache=False).logits
        sdpa = tiny_llama("sdpa")(input_ids=ids, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-5)


def test_packed_samples_do_not_see_each_other(packed_row):
    """The varlen glue on a packed row equals each sample run alone (the point of the backend)."""
    ids, pos = packed_row
    register_backends()
    fn = functools.partial(attention.varlen_attention_forward, kernel=attention.reference_varlen_kernel)
    AttentionInterface.register("test_varlen_reference", fn)
    model = tiny_llama("test_varlen_reference")
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        cu = cu_seqlens_from_position_ids(pos)[0].tolist()
        alone = torch.cat(
            [
                model(input_ids=ids[:, a:b], position_ids=pos[:, a:b], use_cache=False).logits
                for a, b in itertools.pairwise(cu)
            ],
            dim=1,
        )
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_auto_is_sdpa_on_cpu_and_explicit_choices_are_checked(monkeypatch):
    assert resolve_attention("auto", on_gpu=False) == ("sdpa", None)
    with pytest.raises(ValueError, match="no backward pass on CPU"):
        resolve_attention("flex_attention", on_gpu=False)
    with pytest.raises(ValueError, match="CUDA-only"):
        resolve_attention("varlen", on_gpu=False)
    with pytest.raises(ValueError, match="flash-attn"):
        resolve_attention("flash_attention_2", on_gpu=False)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: None)  # an older torch
    with pytest.raises(ValueError, match=r"PyTorch >= 2\.10\); the installed torch is"):
        resolve_attention("varlen", on_gpu=False)


def test_sdpa_fallback_warning_names_the_memory_cost():
    text = attention.dense_mask_cost(16384)
    assert "16,384 x 16,384" in text and "0.27 GB" in text
