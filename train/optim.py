"""The optimizer's inputs: AdamW parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from train.config import ScheduleConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay, vectors (norms, biases) do not. Frozen parameters are left out."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)  # ZeRO-3 keeps the real shape in ds_shape
        (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


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
