"""LoRA: wrap the model in a PEFT adapter, and describe / write the adapter in a checkpoint.

Our config section is ``train.config.LoraConfig``; PEFT's class of the same name is imported as
``PeftLoraConfig``.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from train.config import LoraConfig
from train.model import gather_to_rank0


def apply_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; only adapter weights train."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(lora.target_modules) - names)
    if missing:
        raise ValueError(f"lora.target_modules: the model has no modules named {missing}")
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def adapter_config(peft_model, base_path: Path | None) -> dict[str, Any]:
    """PEFT's adapter_config.json content, pointing at the base weights."""
    cfg = _jsonable(peft_model.peft_config["default"].to_dict())
    cfg["base_model_name_or_path"] = str(base_path) if base_path else None
    return cfg


def write_adapter(peft_model, folder: Path, rank: int) -> None:
    """Gather the trainable LoRA weights and write ``adapter_model.safetensors`` (PEFT names) on rank 0, so a
    checkpoint folder loads with ``PeftModel.from_pretrained(base, folder)`` (collective)."""
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    gathered = dict(gather_to_rank0(trainable, rank))
    if rank != 0:
        return
    state = get_peft_model_state_dict(peft_model, state_dict=gathered)
    assert state and len(state) == len(gathered), "LoRA adapter state dict lost tensors"
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )


def lora_state(lora: LoraConfig, exclude_frozen: bool) -> dict[str, Any]:
    """The ``lora`` entry of hermes_state.json: the adapter's shape and where its frozen base lives."""
    return {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
        "frozen_in_checkpoint": not exclude_frozen,
    }
