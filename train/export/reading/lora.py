"""LoRA adapters: split a PEFT checkpoint into base + adapter, merge lazily, name the PEFT layout.

Merging is row-streamed: ``W'[rows] = W[rows] + scaling * (B[rows] @ A)`` for a Linear
(``(A[:, rows].T @ B.T) * scaling`` for an Embedding), computed in fp32 from the base rows, exactly
PEFT's ``merge_and_unload`` formula (``delta = B @ A * scaling``; ``scaling = alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA; per-module ``rank_pattern`` / ``alpha_pattern``). Only the current
rows of the base and the small factors are ever in memory.

Supported: plain LoRA on Linear and Embedding layers, ``modules_to_save``. Refused with a clear
message: DoRA, LoRA biases, ``fan_in_fan_out``, ``target_parameters``, layer replication, trainable
token indices, non-LoRA PEFT methods.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from train.export.reading.tensors import LazyTensor

_PREFIX = "base_model.model."
_LORA_RE = re.compile(
    r"^(?P<path>.+)\.lora_(?P<kind>embedding_)?(?P<ab>A|B)(?:\.(?P<ad>[^.]+))?(?:\.weight)?$"
)
_SAVE_RE = re.compile(r"^(?P<path>.+)\.modules_to_save\.(?P<ad>[^.]+)\.(?P<leaf>[^.]+)$")
_ORIG_RE = re.compile(r"^(?P<path>.+)\.original_module\.(?P<leaf>[^.]+)$")
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases",
    "fan_in_fan_out": "fan_in_fan_out",
    "target_parameters": "target_parameters",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token indices",
}


@dataclass
class LoraModule:
    path: str
    """The adapted module, by its Hugging Face name (``model.layers.0.self_attn.q_proj``)."""
    a: LazyTensor
    b: LazyTensor
    scaling: float
    embedding: bool = False


@dataclass
class LoraAdapter:
    config: dict[str, Any]
    modules: dict[str, LoraModule]
    overrides: dict[str, LazyTensor] = field(default_factory=dict)
    """``modules_to_save``: full replacement weights, by Hugging Face name."""


def check_adapter_config(config: dict[str, Any]) -> None:
    kind = config.get("peft_type", "LORA")
    kind = str(getattr(kind, "value", kind)).upper()
    if kind != "LORA":
        raise ValueError(f"PEFT method {kind} is not supported; only LoRA adapters export")
    used = [label for key, label in _UNSUPPORTED.items() if config.get(key)]
    if used:
        raise ValueError(
            f"the adapter uses {', '.join(used)}, which the streamed LoRA export does not support"
        )


def _strip(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def split_peft(
    tensors: dict[str, LazyTensor], config: dict[str, Any], adapter_file: bool = False
) -> tuple[dict[str, LazyTensor], LoraAdapter]:
    """Split PEFT-named tensors into base weights (HF names) and the adapter.

    ``adapter_file``: the names come from a saved ``adapter_model.safetensors`` (no adapter name in
    them; every non-LoRA tensor there is a ``modules_to_save`` replacement).
    """
    check_adapter_config(config)
    base: dict[str, LazyTensor] = {}
    factors: dict[str, dict[str, LazyTensor]] = {}
    kinds: dict[str, bool] = {}
    overrides: dict[str, LazyTensor] = {}
    for raw, tensor in tensors.items():
        name = _strip(raw)
        if "lora_magnitude_vector" in name:
            raise ValueError("the adapter uses DoRA, which the streamed LoRA export does not support")
        if m := _LORA_RE.match(name):
            factors.setdefault(m["path"], {})[m["ab"]] = tensor
            kinds[m["path"]] = bool(m["kind"])
        elif m := _SAVE_RE.match(name):
            overrides[f"{m['path']}.{m['leaf']}"] = tensor
        elif m := _ORIG_RE.match(name):
            base[f"{m['path']}.{m['leaf']}"] = tensor
        elif adapter_file:
            overrides[name] = tensor
        else:
            base[name.replace(".base_layer.", ".")] = tensor
    modules = {}
    for path, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA module {path} has only lora_{next(iter(ab))}; the adapter is incomplete")
        rank = ab["A"].shape[0]
        modules[path] = LoraModule(path, ab["A"], ab["B"], _scaling(config, path, rank), kinds[path])
    return base, LoraAdapter(config, modules, overrides)


def _pattern_value(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _scaling(config: dict[str, Any], path: str, rank: int) -> float:
    r = int(_pattern_value(config.get("rank_pattern"), path, config.get("r", rank)))
    alpha = float(_pattern_value(config.get("alpha_pattern"), path, config.get("lora_alpha", r)))
    if r != rank:
        raise ValueError(f"LoRA module {path}: adapter_config says r={r} but its factors have rank {rank}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


class MergedTensor(LazyTensor):
    """``base + scaling * delta`` for one LoRA module, row by row, in fp32."""

    def __init__(self, base: LazyTensor, module: LoraModule) -> None:
        self.base, self.module = base, module
        self.shape, self.dtype = base.shape, torch.float32
        self._a = module.a.materialize().float()
        self._b = module.b.materialize().float()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        w = self.base.rows(start, stop).float()
        if self.module.embedding:
            delta = (self._b @ self._a[:, start:stop]).T
        else:
            delta = self._b[start:stop] @ self._a
        return w + delta * self.module.scaling


def _expected_factor_shapes(module: LoraModule, base_shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    rank = module.a.shape[0]
    if module.embedding:  # base [num_embeddings, dim]; A [r, num_embeddings]; B [dim, r]
        return (rank, base_shape[0]), (base_shape[1], rank)
    return (rank, base_shape[1]), (base_shape[0], rank)  # base [out, in]; A [r, in]; B [out, r]


def merged_view(base: dict[str, LazyTensor], adapter: LoraAdapter) -> dict[str, LazyTensor]:
    """The merged model's tensors (HF names), checking that the base fits the adapter."""
    problems = []
    out = dict(base)
    for path, module in adapter.modules.items():
        weight = f"{path}.weight"
        if weight not in base:
            problems.append(f"{weight} is not in the base model")
            continue
        shape = base[weight].shape
        want_a, want_b = _expected_factor_shapes(module, shape) if len(shape) == 2 else ((), ())
        if (tuple(module.a.shape), tuple(module.b.shape)) != (want_a, want_b):
            problems.append(
                f"{weight}: base {list(shape)} does not fit lora_A {list(module.a.shape)} / lora_B {list(module.b.shape)}"
            )
            continue
        out[weight] = MergedTensor(base[weight], module)
    for name, tensor in adapter.overrides.items():
        if name in base and tuple(base[name].shape) != tuple(tensor.shape):
            problems.append(f"{name}: base {list(base[name].shape)} vs modules_to_save {list(tensor.shape)}")
        out[name] = tensor
    if problems:
        raise ValueError(
            "LoRA merge: the base model's shapes differ from the adapter's ("
            + "; ".join(problems[:6])
            + "). "
            "Pass the base the adapter was trained on with --base-model"
        )
    return out


def adapter_tensors(adapter: LoraAdapter) -> dict[str, LazyTensor]:
    """The adapter under PEFT's saved names (``base_model.model.<path>.lora_A.weight`` …)."""
    out: dict[str, LazyTensor] = {}
    for path, module in adapter.modules.items():
        if module.embedding:
            out[f"{_PREFIX}{path}.lora_embedding_A"] = module.a
            out[f"{_PREFIX}{path}.lora_embedding_B"] = module.b
        else:
            out[f"{_PREFIX}{path}.lora_A.weight"] = module.a
            out[f"{_PREFIX}{path}.lora_B.weight"] = module.b
    for name, tensor in adapter.overrides.items():
        out[f"{_PREFIX}{name}"] = tensor
    return out


def export_adapter_config(config: dict[str, Any], base_path: str | None) -> dict[str, Any]:
    out = dict(config)
    out["inference_mode"] = True
    if base_path:
        out["base_model_name_or_path"] = base_path
    return out
