"""Tiled compute for long rows: the LM-head loss shard by shard, and the decoder MLP over sequence tiles.

Both use DeepSpeed's ALST autograd functions (``deepspeed.runtime.sequence_parallel.ulysses_sp``):

* :func:`head_ce` — ``TiledFusedLogitsLoss``: each shard of trained positions goes through the LM head,
  its cross-entropy and its backward at once (inside the forward), so the logits of one shard are the
  most that ever exist. Two things about it shape how we call it:

  1. the LM-head weight gradient is produced *inside the forward*, with an incoming gradient of 1, and
     its ``backward`` rescales only the hidden-state gradient by the real incoming gradient. Our loss
     backpropagates ``ce_sum * W / N`` (train/loss.py), so the factor goes *into* the shard function and
     the caller backpropagates the returned objective as is: the weight and hidden-state gradients are
     then both exactly those of the one-shot loss;
  2. under ZeRO-3 every head call gathers the head weight (a collective) and the last shard releases its
     gradient to the reduce bucket (``ds_grad_is_ready``), so every rank must make the same number of
     calls: the shard count is agreed over the world (MAX) and positions are padded with ignored targets
     (-100, zero loss and zero gradient) so ``torch.chunk`` returns exactly that many shards.

  Where deepspeed is not installed (``bench/gpu_check.py`` on a bare GPU machine) the same algorithm
  runs from :class:`_ShardedHeadLoss` below.

* :func:`enable_tiled_mlp` — ``TiledMLP`` on every decoder MLP. It composes with ZeRO-3 (the same
  ``ds_grad_is_ready`` protocol, same agreed shard count) and with gradient checkpointing (it saves only
  its input and recomputes per shard in its backward, which runs inside the checkpoint's recompute).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE = -100


def _deepspeed_alst(name: str):
    try:
        from deepspeed.runtime.sequence_parallel import ulysses_sp
    except ImportError:
        return None
    return getattr(ulysses_sp, name)


def agreed_shards(local: int) -> int:
    """The largest ``local`` over all ranks (ZeRO-3 collectives need every rank to make the same calls)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    t = torch.tensor([local], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _pad_rows(x: torch.Tensor, rows: int, value: float | int = 0) -> torch.Tensor:
    if x.shape[1] == rows:
        return x
    pad = x.new_full((x.shape[0], rows - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, pad], dim=1)


# ---------------------------------------------------------------------------------------- the loss


def one_shot_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of token CE (fp32 softmax) of ``head(hidden)`` against ``targets``; [n, d] and [n]."""
    logits = head(hidden)
    return F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE)


def head_ce(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    tile_tokens: int,
    grad_scale: float = 1.0,
    use_deepspeed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective to backpropagate = ce_sum * grad_scale, detached ce_sum) of the LM head on trained
    positions: ``hidden`` [n, d], ``targets`` [n]. ``tile_tokens`` 0 = one shot, else shards of at most
    that many positions (never more logits than one shard). Same values and gradients either way.
    ``use_deepspeed=False``: the deepspeed-free implementation (bench/gpu_check.py must not import it)."""
    if tile_tokens <= 0:
        ce = one_shot_ce(head, hidden, targets)
        return ce * grad_scale, ce.detach()
    n = hidden.shape[0]
    shards = agreed_shards(max(1, math.ceil(n / tile_tokens)))
    rows = shards * max(1, math.ceil(n / shards))
    x = _pad_rows(hidden.unsqueeze(0), rows)
    y = _pad_rows(targets.unsqueeze(0), rows, IGNORE)
    params = [p for p in head.parameters() if p.requires_grad]

    def shard_loss(module: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return one_shot_ce(module, xs, ys) * grad_scale

    tiled = (_deepspeed_alst("TiledFusedLogitsLoss") if use_deepspeed else None) or _ShardedHeadLoss
    objective = tiled.apply(shard_loss, head, x, y, None, shards, params, "sum")
    with torch.no_grad():
        ce = objective.detach() / grad_scale if grad_scale else objective.detach()
    return objective, ce


class _ShardedHeadLoss(torch.autograd.Function):
    """``TiledFusedLogitsLoss``'s algorithm for environments without deepspeed (same arguments): each
    shard's forward and backward run in the forward; the hidden-state gradient is kept for the backward."""

    @staticmethod
    def forward(ctx, fn: Callable, module, x, y, mask, shards: int, params, reduction: str):
        assert mask is None and reduction == "sum", "only the arguments head_ce passes are supported"
        needs_grad = x.requires_grad
        x = x.detach().reshape(-1, x.shape[-1])
        y = y.reshape(-1)
        x_grad = torch.zeros_like(x) if needs_grad else None
        total = x.new_zeros((), dtype=torch.float32)
        for i, (xs, ys) in enumerate(zip(x.chunk(shards), y.chunk(shards), strict=True)):
            if not needs_grad:
                total = total + fn(module, xs, ys).detach()
                continue
            xs = xs.detach().requires_grad_(True)
            with torch.enable_grad():
                out = fn(module, xs, ys)
            torch.autograd.backward(out)  # the parameters' .grad accumulate shard after shard
            x_grad.narrow(0, i * x.chunk(shards)[0].shape[0], xs.shape[0]).copy_(xs.grad)
            total = total + out.detach()
        ctx.save_for_backward(x_grad.unsqueeze(0) if needs_grad else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx, grad):
        (x_grad,) = ctx.saved_tensors
        return None, None, x_grad * grad, None, None, None, None, None


# ----------------------------------------------------------------------------------------- the MLP


def _tiled_mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    tiled_mlp = _deepspeed_alst("TiledMLP")
    seq = x.shape[-2]
    shards = agreed_shards(max(1, math.ceil(seq / x.shape[-1])))
    rows = shards * max(1, math.ceil(seq / shards))
    padded = x if rows == seq else torch.cat([x, x.new_zeros(*x.shape[:-2], rows - seq, x.shape[-1])], dim=-2)
    params = [p for p in self.parameters() if p.requires_grad]
    out = tiled_mlp.apply(type(self).__mro__[1].forward, self, padded, shards, params)
    return out[..., :seq, :]


def enable_tiled_mlp(model: torch.nn.Module, mlp_class: type) -> int:
    """Make every ``mlp_class`` module of ``model`` compute over sequence tiles of ``hidden_size`` tokens
    (DeepSpeed's TiledMLP). The module's class becomes a subclass with the tiled forward, so parameter
    names, checkpoints and exports are unchanged. Returns the number of MLPs switched."""
    if _deepspeed_alst("TiledMLP") is None:
        raise ValueError("model.tiled_mlp needs deepspeed (its ALST TiledMLP); install deepspeed>=0.17.5")
    tiled_class = type(f"Tiled{mlp_class.__name__}", (mlp_class,), {"forward": _tiled_mlp_forward})
    count = 0
    for module in model.modules():
        if type(module) is mlp_class:
            module.__class__ = tiled_class
            count += 1
    if not count:
        raise ValueError(f"model.tiled_mlp: the model has no {mlp_class.__name__} modules")
    return count
