"""Streamed LoRA merge equals PEFT's merge_and_unload; adapter names equal PEFT's saved names."""

from __future__ import annotations

import math

import pytest
import torch

from train.export.reading.tensors import (
    InMemoryTensor,
    adapter_tensors,
    check_adapter_config,
    merged_view,
    split_peft,
)


def _peft_model(lora_kwargs, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    return model


def _lazy(state):
    return {n: InMemoryTensor(t.detach().clone()) for n, t in state.items()}


def _merged_reference(model):
    import copy

    return {n: t.detach() for n, t in copy.deepcopy(model).merge_and_unload().state_dict().items()}


@pytest.mark.parametrize(
    "lora_kwargs",
    [
        {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["k_proj", "o_proj"]},
        {
            "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "gate_proj", "embed_tokens"],
            "rank_pattern": {"gate_proj": 2}, "alpha_pattern": {"q_proj": 3}, "modules_to_save": ["lm_head"],
        },
    ],
)  # fmt: skip
def test_streamed_merge_equals_peft(lora_kwargs):
    model = _peft_model(lora_kwargs)
    config = model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    base, adapter = split_peft(_lazy(model.state_dict()), config)
    merged = merged_view(base, adapter)
    want = _merged_reference(model)
    assert set(merged) == set(want)
    for name, t in merged.items():
        got = t.materialize()
        assert torch.equal(got, want[name]), (name, (got - want[name]).abs().max())


def test_adapter_names_match_peft_saved_names():
    from peft.utils import get_peft_model_state_dict

    model = _peft_model(
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}
    )
    config = model.peft_config["default"].to_dict()
    _, adapter = split_peft(
        _lazy(model.state_dict()), {k: v for k, v in config.items() if not isinstance(v, set)}
    )
    ours = adapter_tensors(adapter)
    theirs = get_peft_model_state_dict(model)
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert torch.equal(ours[name].materialize(), t)
    # and the saved names parse back into the same adapter (adapter-folder input)
    _, again = split_peft(ours, config | {"target_modules": ["q_proj", "v_proj"]}, adapter_file=True)
    assert set(again.modules) == set(adapter.modules) and set(again.overrides) == set(adapter.overrides)


def test_merge_refuses_a_base_of_other_shapes():
    model = _peft_model({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    base, adapter = split_peft(_lazy(model.state_dict()), config)
    base["model.layers.0.self_attn.q_proj.weight"] = InMemoryTensor(torch.zeros(32, 64))
    with pytest.raises(ValueError, match=r"base model's shapes differ.*q_proj.weight: base \[32, 64\]"):
        merged_view(base, adapter)


@pytest.mark.parametrize(
    ("key", "value", "label"),
    [("use_dora", True, "DoRA"), ("lora_bias", True, "LoRA biases"), ("peft_type", "IA3", "IA3")],
)
def test_unsupported_adapters_are_refused(key, value, label):
    with pytest.raises(ValueError, match=label):
        check_adapter_config({"peft_type": "LORA", "r": 4, key: value})


def test_rank_mismatch_between_config_and_factors():
    model = _peft_model({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    with pytest.raises(ValueError, match="says r=8 but its factors have rank 4"):
        split_peft(_lazy(model.state_dict()), {"r": 8, "lora_alpha": 8})


def test_scaling_formula():
    model = _peft_model({"r": 4, "lora_alpha": 6, "use_rslora": True, "target_modules": ["q_proj"]})
    _, adapter = split_peft(_lazy(model.state_dict()), {"r": 4, "lora_alpha": 6, "use_rslora": True})
    assert {m.scaling for m in adapter.modules.values()} == {6 / math.sqrt(4)}
