"""Tiled LM-head loss and tiled MLP (train/tiled.py): same values and gradients as the one-shot compute,
with DeepSpeed's ALST autograd functions and with the deepspeed-free fallback the GPU check uses."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from data_recipes.config_io import ConfigError
from train import tiled
from train.config import load_train_config
from train.data import MicroBatch
from train.loss import micro_ce_sum, micro_objective
from train.model import preset_config

SMALL = {"vocab_size": 1000, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}


def tiny(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        preset_config("tiny", {**SMALL, **overrides}), dtype=torch.float32, attn_implementation="sdpa"
    )


def packed_micro_batch(length: int = 90, trained: int = 61) -> MicroBatch:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (1, length), generator=gen)
    index = torch.randperm(length - 1, generator=gen)[:trained].sort().values
    pos = torch.cat([torch.arange(35), torch.arange(length - 35)]).unsqueeze(0)
    return MicroBatch(ids, pos, index, ids[0, index + 1], [7], [35, length - 35])


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_grads(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    """Relative error of every gradient tensor (max |diff| / max |ref|): summation order differs."""
    assert got.keys() == ref.keys()
    for name, g in ref.items():
        err = float((got[name] - g).abs().max() / g.abs().max().clamp_min(1e-30))
        assert err <= tol, f"{name}: relative error {err:.2e}"


@pytest.fixture(params=["deepspeed", "fallback"])
def implementation(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(tiled, "_deepspeed_alst", lambda name: None)
    return request.param


@pytest.mark.parametrize("tile", [1, 7, 16, 61, 1000])
def test_tiled_loss_equals_one_shot(tile, implementation):
    model, mb, scale = tiny(), packed_micro_batch(), 0.37  # scale: the W/N factor of train/loss.py
    model.zero_grad()
    (micro_ce_sum(model, mb) * scale).backward()
    ref, ref_ce = grads(model), float(micro_ce_sum(model, mb).detach())
    model.zero_grad()
    objective, ce = micro_objective(model, mb, torch.device("cpu"), tile, scale)
    objective.backward()
    assert float(ce) == pytest.approx(ref_ce, rel=1e-6)
    assert float(objective) == pytest.approx(ref_ce * scale, rel=1e-6)
    assert_same_grads(grads(model), ref)


def test_tiled_loss_never_holds_more_than_one_shard_of_logits(implementation):
    """The LM head only ever sees ``tile_tokens`` rows (the padded last shard included)."""
    model, mb = tiny(), packed_micro_batch()
    seen: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].reshape(-1, 64).shape[0]))
    micro_objective(model, mb, torch.device("cpu"), 16, 1.0)[0].backward()
    handle.remove()
    assert seen[0] == 0  # the model's own head call: no rows (logits_to_keep empty)
    assert seen[1:] == [16, 16, 16, 16]  # 61 trained positions -> 4 shards of 16 (3 padded, ignored)


def test_eval_without_grad_gives_the_same_sum():
    model, mb = tiny(), packed_micro_batch()
    with torch.no_grad():
        _, ce = micro_objective(model, mb, torch.device("cpu"), 9)
        assert float(ce) == pytest.approx(float(micro_ce_sum(model, mb)), rel=1e-6)


def test_tiled_mlp_equals_the_plain_mlp():
    plain, tiled_model = tiny(), tiny()
    n = tiled.enable_tiled_mlp(tiled_model, LlamaMLP)
    assert n == 2 and type(tiled_model.model.layers[0].mlp).__name__ == "TiledLlamaMLP"
    assert [k for k, _ in plain.named_parameters()] == [k for k, _ in tiled_model.named_parameters()]
    mb = packed_micro_batch(length=150)  # 150 tokens / hidden 64 -> 3 tiles, the last one padded
    for model in (plain, tiled_model):
        model.zero_grad()
        micro_ce_sum(model, mb).backward()
    torch.testing.assert_close(micro_ce_sum(tiled_model, mb), micro_ce_sum(plain, mb), rtol=1e-6, atol=1e-6)
    assert_same_grads(grads(tiled_model), grads(plain))


def test_negative_tile_tokens_is_refused():
    with pytest.raises((ConfigError, ValueError), match=r"loss\.tile_tokens=-1 is negative"):
        load_train_config("configs/tiny-cpu.yaml", ["loss.tile_tokens=-1"])
