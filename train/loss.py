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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.data import MicroBatch


class NonFiniteLossError(ValueError):
    """The loss of a step was NaN or inf; the step was not applied."""


def nonfinite_loss_error(step: int, rows: list[int], data_path: str, last_checkpoint) -> NonFiniteLossError:
    """The error for a step whose loss was not finite: which rows, and how to go on."""
    where = f"resume from {last_checkpoint}" if last_checkpoint else "restart"
    return NonFiniteLossError(
        f"non-finite loss at step {step} in train rows {rows} of {data_path}; the step was not applied. "
        f"Inspect the rows (`hermes-sft data inspect`), drop them or lower optim.lr, then {where}"
    )


def micro_ce_sum(model: torch.nn.Module, mb: MicroBatch, device: torch.device | None = None) -> torch.Tensor:
    """Sum of token CE (fp32) over the trained positions of one flattened micro-batch.

    Only trained positions go through the LM head (``logits_to_keep``): the logits of a 16k-token row
    over a 128k vocabulary would take 8 GB in fp32.
    """
    device = device or next(model.parameters()).device
    out = model(
        input_ids=mb.input_ids.to(device),
        position_ids=mb.position_ids.to(device),
        use_cache=False,  # a cache disables transformers' packed-sequence masking
        logits_to_keep=mb.target_index.to(device),
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    return F.cross_entropy(logits.float(), mb.targets.to(device), reduction="sum") * mb.weight


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
