"""What a model config says the weights must be: names, shapes, Linear layers (a meta-device model).

Building the model on the ``meta`` device allocates nothing, so a 70B config is checked in
milliseconds. Only architectures that ship with transformers are accepted (no remote code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelLayout:
    architecture: str
    tensors: dict[str, tuple[int, ...]]
    """Every tensor the saved model must hold (tied duplicates removed), in module order."""
    linear_weights: list[str]
    """``<module>.weight`` of every ``nn.Linear``."""
    decoder_prefix: str
    """Name prefix of the decoder blocks (``model.layers.``)."""


def build_config(config_dict: dict):
    from transformers import AutoConfig

    model_type = config_dict.get("model_type")
    if not model_type:
        raise ValueError("the model config has no model_type; pass the model's config.json")
    kwargs = {k: v for k, v in config_dict.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except ValueError as err:
        raise ValueError(f"model_type {model_type!r} is not a transformers architecture: {err}") from err


def model_layout(config_dict: dict) -> ModelLayout:
    from transformers import AutoModelForCausalLM

    config = build_config(config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters():  # remove_duplicate=True drops tied aliases
        tensors[name] = tuple(p.shape)
    for name, b in model.named_buffers():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if leaf not in module._non_persistent_buffers_set:
            tensors[name] = tuple(b.shape)
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    linears = [n for n in linears if n in tensors]
    prefix = _decoder_prefix(list(tensors))
    return ModelLayout(type(model).__name__, tensors, linears, prefix)


def _decoder_prefix(names: list[str]) -> str:
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                return ".".join(parts[:i]) + "."
    return ""


def shape_mismatches(
    have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], limit: int = 6
) -> list[str]:
    """Human-readable differences between two name → shape maps (empty when they agree)."""
    out = []
    for name in [n for n in want if n not in have][:limit]:
        out.append(f"missing {name} {list(want[name])}")
    for name in [n for n in have if n not in want][:limit]:
        out.append(f"unexpected {name} {list(have[name])}")
    for name in [n for n in want if n in have and tuple(have[n]) != tuple(want[n])][:limit]:
        out.append(f"{name}: checkpoint {list(have[name])} vs config {list(want[name])}")
    return out


def check_weights_match(
    have: dict[str, tuple[int, ...]], layout: ModelLayout, what: str, config_src: str
) -> None:
    diffs = shape_mismatches(have, layout.tensors)
    if diffs:
        raise ValueError(
            f"{what} does not match the model config ({config_src}): "
            + "; ".join(diffs)
            + ". The checkpoint "
            "comes from a different model config; pass the right one with --model-config"
        )
