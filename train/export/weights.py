"""Open a :class:`~train.export.source.Source`'s weights as lazy tensors under Hugging Face names.

For a full model the result is the model's tensors; for a LoRA source it is the base plus the adapter
(and the merged view, built on demand). Every path checks names and shapes against the model config
(a meta-device model) before any data is read, so a checkpoint from another config fails at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train.export.lora import LoraAdapter, merged_view, split_peft
from train.export.model_meta import ModelLayout, check_weights_match, model_layout
from train.export.safetensors_io import read_safetensors_folder
from train.export.source import Source
from train.export.tensors import LazyTensor, MmapTensor
from train.export.zero3_reader import open_zero3

_WRAPPERS = ("module.", "_orig_mod.")


@dataclass
class Weights:
    layout: ModelLayout
    base: dict[str, LazyTensor]
    """Full model tensors (HF names); for LoRA, the base model's."""
    adapter: LoraAdapter | None = None
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    """The model config (Hugging Face dict) the layout was built from."""

    def model(self) -> dict[str, LazyTensor]:
        """The tensors of the model to export: the merged model for LoRA sources. In layout order."""
        tensors = merged_view(self.base, self.adapter) if self.adapter else self.base
        return {name: tensors[name] for name in self.layout.tensors}


def _unwrap(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.replace("._orig_mod.", ".")


def _shapes(tensors: dict[str, LazyTensor]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in tensors.items()}


def _restrict(tensors: dict[str, LazyTensor], layout: ModelLayout) -> dict[str, LazyTensor]:
    """Drop tied aliases the layout does not save (``lm_head.weight`` of a tied model)."""
    return {n: t for n, t in tensors.items() if n in layout.tensors}


def open_weights(src: Source) -> Weights:
    weights = _open(src)
    weights.config = src.model_config
    return weights


def _open(src: Source) -> Weights:
    layout = model_layout(src.model_config)
    if src.kind == "zero3":
        ckpt = open_zero3(src.ds_dir)
        tensors = {_unwrap(n): t for n, t in ckpt.tensors.items()}
        notes = [f"ZeRO-3 checkpoint, {ckpt.world_size} ranks, DeepSpeed {ckpt.ds_version}"]
        if src.is_lora:
            return _lora_weights(src, layout, tensors, adapter_file=False, notes=notes)
        tensors = _restrict(tensors, layout)
        check_weights_match(_shapes(tensors), layout, f"checkpoint {src.ds_dir}", src.config_origin)
        return Weights(layout, tensors, notes=notes)
    folder = src.hf_dir
    assert folder is not None
    if src.is_lora:
        tensors = read_safetensors_folder(folder, stem="adapter_model")
        return _lora_weights(src, layout, tensors, adapter_file=True, notes=[f"PEFT adapter folder {folder}"])
    tensors = _restrict(_read_hf(folder), layout)
    check_weights_match(_shapes(tensors), layout, f"model folder {folder}", src.config_origin)
    return Weights(layout, tensors, notes=[f"Hugging Face folder {folder}"])


def _lora_weights(
    src: Source, layout: ModelLayout, tensors: dict[str, LazyTensor], adapter_file: bool, notes: list[str]
) -> Weights:
    assert src.adapter_config is not None
    base, adapter = split_peft(tensors, src.adapter_config, adapter_file=adapter_file)
    base = _restrict(base, layout)
    if len(base) < len(layout.tensors):  # the base is not in the checkpoint (exclude_frozen_parameters)
        if src.base_model_dir is None:
            raise ValueError(
                "the LoRA checkpoint does not contain the base weights and no base model was found; "
                "pass --base-model PATH (the model folder the adapter was trained on)"
            )
        base = _restrict(_read_hf(src.base_model_dir), layout)
        notes.append(f"base weights from {src.base_model_dir}")
        what = f"base model {src.base_model_dir}"
    else:
        what = f"base weights in {src.ds_dir}"
    check_weights_match(_shapes(base), layout, what, src.config_origin)
    return Weights(layout, base, adapter, notes)


def _read_hf(folder: Path) -> dict[str, LazyTensor]:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return {_unwrap(n): t for n, t in read_safetensors_folder(folder).items()}
    return _read_torch_bins(folder)


def _read_torch_bins(folder: Path) -> dict[str, LazyTensor]:
    """A ``pytorch_model.bin`` (or an index of them), memory-mapped, tensors only (``weights_only``)."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "pytorch_model.bin").is_file():
        files = ["pytorch_model.bin"]
    else:
        raise ValueError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")
    out: dict[str, LazyTensor] = {}
    for file in files:
        try:
            state = torch.load(str(folder / file), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise ValueError(f"{folder / file}: unreadable weights file ({err})") from err
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                out[_unwrap(name)] = MmapTensor(tensor)
    return out
