"""Cross-entropy on trained tokens, normalized by the trained tokens of the whole global batch.

The loss of an optimizer step is ``sum of CE over every trained token of the global batch / their
number``, whatever the split into ranks and micro-batches. A mean per micro-batch, averaged over
micro-batches and ranks (the "mean of means" of many trainers), over-weights tokens of short
micro-batches; with packing and variable assistant shares this is a real bias.

DeepSpeed's engine averages gradients over the W data-parallel ranks (ZeRO reduce-scatter divides by
W), and ``engine.backward`` divides by the accumulation steps unless ``scale_wrt_gas=False``. So each
micro-batch backpropagates ``ce_sum * W / N`` with ``scale_wrt_gas=False``, N being the global count
(all-reduced before the first backward of the step)::

    (1/W) * sum_ranks sum_micro grad(ce_sum * W / N) = grad(sum of all CE) / N

Under sequence parallelism (train/sequence_parallel.py) each rank holds a slice of a row and its trained
positions; every trained token is in exactly one slice, so N is still the all-reduced sum of the local
counts and W the world size (DeepSpeed is not told about SP: it averages over all W ranks).

The objective of a micro-batch is :func:`micro_objective`: the body's hidden states at the trained
positions, then :func:`train.tiled.head_ce` (one shot, or tiled with ``loss.tile_tokens``). A second
objective (e.g. preference pairs) can sit beside it on the same :func:`trained_hidden_states`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.data import MicroBatch
from train.tiled import head_ce


class NonFiniteLossError(ValueError):
    """The loss of a step was NaN or inf; the step was not applied."""


def nonfinite_loss_error(step: int, rows: list[int], data_path: str, last_checkpoint) -> NonFiniteLossError:
    """The error for a step whose loss was not finite: which rows, and how to go on."""
    where = f"resume from {last_checkpoint}" if last_checkpoint else "restart"
    return NonFiniteLossError(
        f"non-finite loss at step {step} in train rows {rows} of {data_path}; the step was not applied. "
        f"Inspect the rows (`hermes-sft data inspect`), drop them or lower optim.lr, then {where}"
    )


def trained_logits(model: torch.nn.Module, mb: MicroBatch, device: torch.device) -> torch.Tensor:
    """[n, V] fp32 logits at the trained positions of one flattened micro-batch, in one shot through the
    model's own forward (``logits_to_keep``: only those positions reach the LM head)."""
    out = model(
        input_ids=mb.input_ids.to(device),
        position_ids=mb.position_ids.to(device),
        use_cache=False,  # a cache disables transformers' packed-sequence masking
        logits_to_keep=mb.target_index.to(device),
    )
    return out.logits.reshape(-1, out.logits.shape[-1]).float()


def micro_ce_sum(model: torch.nn.Module, mb: MicroBatch, device: torch.device | None = None) -> torch.Tensor:
    """Sum of token CE (fp32) over the trained positions of one flattened micro-batch, in one shot: the
    plain reference the tests compare the trainer's :func:`micro_objective` with (one-shot or tiled, they
    are equal)."""
    device = device or next(model.parameters()).device
    logits = trained_logits(model, mb, device)
    return F.cross_entropy(logits, mb.targets.to(device), reduction="sum") * mb.weight


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` inside a DeepSpeed engine and/or a PEFT wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def trained_hidden_states(model: torch.nn.Module, mb: MicroBatch, device: torch.device) -> torch.Tensor:
    """[n, d] final-norm hidden states at the trained positions of ``mb``. The model runs through its own
    forward (engine hooks intact) with no LM-head rows (``logits_to_keep`` empty); a forward hook on the
    final norm hands over its output (no per-layer hidden states are kept)."""
    captured: list[torch.Tensor] = []
    norm = causal_lm(model).get_decoder().norm
    handle = norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(
            input_ids=mb.input_ids.to(device),
            position_ids=mb.position_ids.to(device),
            use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=device),
        )
    finally:
        handle.remove()
    return captured[-1][0, mb.target_index.to(device)]


def micro_objective(
    model: torch.nn.Module,
    mb: MicroBatch,
    device: torch.device,
    tile_tokens: int = 0,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective to backpropagate = CE sum x ``grad_scale``, detached CE sum) of one micro-batch; the
    LM head sees at most ``tile_tokens`` positions at once (0 = all)."""
    hidden = trained_hidden_states(model, mb, device)
    head = causal_lm(model).get_output_embeddings()
    objective, ce = head_ce(head, hidden, mb.targets.to(device), tile_tokens, grad_scale * mb.weight)
    return objective, ce * mb.weight


def backward_scale(world_size: int, global_trained_tokens: int) -> float:
    """Factor for ``engine.backward(ce_sum * factor, scale_wrt_gas=False)`` (see the module docstring)."""
    if global_trained_tokens <= 0:
        raise ValueError(
            "the global batch has no trained tokens (every label is -100); check the dataset labels"
        )
    return world_size / global_trained_tokens


def reference_loss(model: torch.nn.Module, micro_batches: list[MicroBatch]) -> torch.Tensor:
    """Single-process reference: sum of CE over all micro-batches / total trained tokens."""
    total = sum(mb.num_trained for mb in micro_batches)
    return sum(micro_ce_sum(model, mb) for mb in micro_batches) / total
