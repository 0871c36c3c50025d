"""Ulysses sequence parallelism (``distributed.sequence_parallel: N``) with packed rows.

Each group of N consecutive ranks shares a micro-batch: rank r of the group keeps tokens
``[r T/N, (r+1) T/N)`` of the flattened row (and the trained positions among them). Inside each attention
layer, DeepSpeed's ALST ``UlyssesSPAttentionHF`` exchanges (all-to-all) sequence slices for head slices,
so the core attention sees the whole row for H/N heads, then exchanges back. Everything else (embedding,
MLP, norms, LM head and loss) is per token and runs on the local slice.

What we take from DeepSpeed and what not, and why:

* ``UlyssesSPAttentionHF`` (the all-to-all attention): used as is. It hands the core attention the
  all-gathered ``position_ids`` and drops the model's mask, so the core must derive the sample boundaries
  from ``position_ids``: our packed backends do (train/attention.py; ``sdpa`` becomes ``hermes_sdpa``).
  Its ``register_with_transformers`` is not used: it overrides the core name globally (``sdpa`` would
  keep transformers' mask path and lose the sample isolation, and its flex path rebuilds a plain causal
  mask) and installs DeepSpeed's sequence-parallel groups, which change how ZeRO averages gradients
  (W/N vs W depending on the reduce path) and how checkpoints are named. We register the wrapper under our
  own name and keep DeepSpeed unaware of SP: ZeRO-3 partitions and averages over all W ranks, the loss
  normalization of train/loss.py holds unchanged, and checkpoints are the same files at any N.
* ``UlyssesSPDataLoaderAdapter``: not used. It wraps a DataLoader of padded [bs, seqlen] batches with
  ``labels`` and all-gathers each rank's batch; our stream already gives every rank of a group the same
  packed rows (train/data.py ``rank_slices``), so :func:`shard_micro_batch` slices locally, with no
  collective, and keeps our shifted-in-row ``target_index`` instead of ``shift_labels``.

Rows whose length does not divide by N are padded at the end with a separate pad "sample" (its own
positions from 0, no targets): it attends only to itself, and no real token sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_recipes.tokenizer import PAD_ID
from train.attention import FLEX, PACKED_SDPA, VARLEN, register_backends, resolve_attention
from train.config import BatchLayout
from train.data import MicroBatch

ULYSSES = "hermes_ulysses"
# The core attention under the Ulysses wrapper, for each attn_implementation the model resolves to.
CORE = {
    "sdpa": PACKED_SDPA,
    PACKED_SDPA: PACKED_SDPA,
    VARLEN: VARLEN,
    FLEX: FLEX,
    "flash_attention_2": "flash_attention_2",  # transformers derives cu_seqlens from position_ids
}


@dataclass
class SPGroup:
    size: int
    rank: int
    group: object
    """The torch.distributed process group of this rank's sequence-parallel ranks."""


def check_heads(hf_config, size: int) -> None:
    """ValueError unless ``size`` splits the attention heads as Ulysses needs."""
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", heads)
    if heads % size:
        raise ValueError(
            f"distributed.sequence_parallel={size} does not divide the model's {heads} attention heads; use a "
            f"divisor of {heads}"
        )
    if kv % size and size % kv:
        raise ValueError(
            f"distributed.sequence_parallel={size} and the model's {kv} key/value heads: one must divide the "
            f"other (Ulysses splits or replicates KV heads); use a divisor or multiple of {kv}"
        )


def init_groups(size: int, world: int, rank: int) -> SPGroup | None:
    """None when ``size`` is 1 (SP off). Else groups of ``size`` consecutive ranks (within a node when ``size`` divides the GPUs per node, so the
    all-to-all stays on NVLink). Collective: every rank creates every group, in the same order."""
    if size == 1:
        return None
    if world % size:
        raise ValueError(f"distributed.sequence_parallel={size} does not divide the world size {world}")
    groups = [dist.new_group(list(range(start, start + size))) for start in range(0, world, size)]
    return SPGroup(size=size, rank=rank % size, group=groups[rank // size])


def register_ulysses(hf_config, attn: str, sp: SPGroup) -> str:
    """Register DeepSpeed's Ulysses attention around the packed core for ``attn``; returns the name to
    build the model with."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if attn not in CORE:
        raise ValueError(
            f"model.attn_implementation resolves to {attn!r}, which cannot run under sequence parallelism "
            "(it needs a dense [T, T] mask); use sdpa, varlen, flex_attention or flash_attention_2"
        )
    check_heads(hf_config, sp.size)
    register_backends()
    heads = hf_config.num_attention_heads
    uattn = UlyssesSPAttentionHF(
        attn=ALL_ATTENTION_FUNCTIONS[CORE[attn]],
        batch_size=1,  # the rows of a micro-batch are one flattened sequence
        attn_head_count=heads,
        attn_head_size=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
        kv_head_count=getattr(hf_config, "num_key_value_heads", heads),
        num_hidden_layers=hf_config.num_hidden_layers,
        process_group=sp.group,
        seq_length_is_variable=True,
    )

    def ulysses_attention(module, query, key, value, attention_mask, *args, **kwargs):
        return uattn(module, query, key, value, None, *args, **kwargs)  # boundaries come from position_ids

    AttentionInterface.register(ULYSSES, ulysses_attention)
    return ULYSSES


def describe(layout: BatchLayout) -> str:
    """'N data-parallel ranks' and, under SP, how each micro-batch is split (for the setup log)."""
    sp = f" (each micro-batch split over {layout.sequence_parallel} sequence-parallel ranks)"
    return f"{layout.data_parallel} data-parallel ranks" + (sp if layout.sequence_parallel > 1 else "")


def model_attention(model_cfg, hf_config, on_gpu: bool, seq_len, sp: SPGroup | None, warn) -> str:
    """The attention implementation to build the model with: ``model.attn_implementation`` resolved
    (train/attention.py; a fallback warning goes to ``warn``), wrapped in Ulysses under SP."""
    attn, warning = resolve_attention(model_cfg.attn_implementation, on_gpu, seq_len)
    if warning:
        warn(f"WARNING: {warning}")
    return attn if sp is None else register_ulysses(hf_config, attn, sp)


def local_slice(mb: MicroBatch, sp: SPGroup | None) -> MicroBatch:
    """This rank's part of a micro-batch: its slice under sequence parallelism, else all of it."""
    return mb if sp is None else shard_micro_batch(mb, sp)


def shard_micro_batch(mb: MicroBatch, sp: SPGroup) -> MicroBatch:
    """This rank's slice of a flattened micro-batch (padded at the end to a multiple of ``sp.size``).
    ``seq_lengths`` stay the whole row's (attention FLOPs are counted once per group by the caller)."""
    length = int(mb.input_ids.shape[1])
    pad = -length % sp.size
    ids, pos = mb.input_ids, mb.position_ids
    if pad:
        ids = torch.cat([ids, ids.new_full((1, pad), PAD_ID)], dim=1)
        pos = torch.cat([pos, torch.arange(pad, dtype=pos.dtype).unsqueeze(0)], dim=1)
    chunk = (length + pad) // sp.size
    lo, hi = sp.rank * chunk, (sp.rank + 1) * chunk
    keep = (mb.target_index >= lo) & (mb.target_index < hi)
    return MicroBatch(
        input_ids=ids[:, lo:hi],
        position_ids=pos[:, lo:hi],
        target_index=mb.target_index[keep] - lo,
        targets=mb.targets[keep],
        row_ids=mb.row_ids,
        seq_lengths=mb.seq_lengths,
        weight=mb.weight,
        padding=max(0, hi - max(lo, length)),
    )
