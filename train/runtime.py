"""Pieces of the recipe that are not the training loop: LR schedule, base-model and adapter writes."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from train.config import LoraSection, ModelConfig, ScheduleConfig
from train.model import gather_to_rank0, write_safetensors


class LRSchedule:
    """LR multiplier for optimizer step ``s`` (0-based): linear warmup to 1 over ``warmup_steps`` (the
    first step already trains), then cosine / linear decay to ``min_lr_ratio`` at the last step, or
    constant. A callable object, so ``LambdaLR`` checkpoints its settings."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.steps, self.warmup, self.kind, self.min_ratio = (
            cfg.steps,
            cfg.warmup_steps,
            cfg.kind,
            cfg.min_lr_ratio,
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - 1 - self.warmup))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("model*.safetensors"))


def replace_model_source(model_cfg: ModelConfig, path: Path) -> ModelConfig:
    """The same model settings, loading weights from ``path`` instead of building a preset."""
    return dataclasses.replace(model_cfg, preset=None, path=str(path), overrides={})


def write_base_model(
    model: torch.nn.Module, hf_config, out: Path, rank: int, barrier: Callable[[], None]
) -> None:
    """RUN_DIR/base_model/: the initial weights of a config-built model (safetensors + config.json),
    so a LoRA run's frozen base can be restored on resume and merged at export (collective)."""
    tmp = out.with_name(out.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write_safetensors(gather_to_rank0(model.named_parameters(), rank), tmp, rank)
    if rank == 0:
        hf_config.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    barrier()


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
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

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


def lora_state(lora: LoraSection, exclude_frozen: bool) -> dict[str, Any]:
    return {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
        "frozen_in_checkpoint": not exclude_frozen,
    }
