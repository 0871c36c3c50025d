"""This rank's device and backend, and the small collectives the recipe builds on."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.distributed as dist


def quiet_deepspeed() -> None:
    """Hide DeepSpeed's INFO logs (HERMES_SFT_VERBOSE=1 keeps them) and torch's deprecation warnings
    about the torch.distributed calls DeepSpeed makes (they are not ours to fix)."""
    for deprecated in (
        r".*torch\.distributed\.\w+ is deprecated",
        r".*`torch\.distributed\.\w+` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=deprecated, category=FutureWarning)
    if not os.environ.get("HERMES_SFT_VERBOSE"):
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` (made the current device) when a GPU is visible, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def resolve_backend(backend: Literal["auto", "nccl", "gloo"], device: torch.device) -> str:
    """``distributed.backend``: auto = nccl on GPU, gloo on CPU."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def all_reduce_sum(device: torch.device, values: list[float]) -> list[float]:
    """Sum a few numbers over every rank, in float64 (token counts stay exact)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def on_rank0(fn: Callable[[], Any], rank: int, world: int, share: bool = True) -> Any:
    """Run ``fn`` on rank 0 while the others wait. Any exception there is raised on every rank (a
    ValueError stays a ValueError), so a bad input never leaves ranks stuck in a collective.
    ``share``: broadcast the result to every rank."""
    outcome: tuple[str, Any] = ("ok", None)
    error: Exception | None = None
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except Exception as err:
            error = err
            outcome = ("value_error" if isinstance(err, ValueError) else "error", str(err))
    if world > 1:
        box = [outcome if (rank == 0 and (share or outcome[0] != "ok")) else ("ok", None)]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0] if rank != 0 else outcome
    if error is not None:
        raise error
    kind, value = outcome
    if kind == "value_error":
        raise ValueError(value)
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value
