"""BF16 export: every tensor cast to bfloat16 (non-floating buffers keep their dtype), row chunk by chunk."""

from __future__ import annotations

from functools import partial

import torch

from train.export.safetensors_io import ShardedWriter, TensorSpec
from train.export.tensors import DEFAULT_CHUNK_BYTES, LazyTensor, row_chunks
from train.export.writer import Output


def copy_rows(name: str, t: LazyTensor, dtype: torch.dtype, chunk_bytes: int, writer: ShardedWriter) -> None:
    """Stream ``t`` into ``writer`` as ``dtype`` (round to nearest even for fp32 → bf16)."""
    for start, stop in row_chunks(t, chunk_bytes):
        writer.write(name, t.rows(start, stop).to(dtype), start)


def out_dtype(t: LazyTensor) -> torch.dtype:
    return torch.bfloat16 if t.dtype.is_floating_point else t.dtype


def bf16_outputs(tensors: dict[str, LazyTensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Output]:
    outputs = []
    for name, t in tensors.items():
        dtype = out_dtype(t)
        spec = TensorSpec(name, tuple(t.shape), dtype)
        outputs.append(Output([spec], partial(copy_rows, name, t, dtype, chunk_bytes), name))
    return outputs
