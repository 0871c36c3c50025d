"""The one safetensors writer: planned, sharded, streamed (exports and the trainer's gathered saves).

Every tensor's shape and dtype is known before any data exists, so the shard layout, the
headers and every byte offset are planned up front. Data then arrives in any order, chunk by chunk,
and is written with ``pwrite`` at its planned offset; nothing larger than one chunk is ever held. The
files are byte-identical to ``safetensors.torch.save_file`` (same header JSON, same tensor order:
larger dtypes first, then by name, which also keeps every tensor aligned).
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


def item_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def parse_size(text: str | int) -> int:
    """``"5GB"`` / ``"500MB"`` / ``"2GiB"`` / ``1000`` → bytes (decimal units, as Hugging Face uses)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper()
    digits = s.rstrip("KMGTIB")
    unit = s[len(digits) :]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ValueError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB")
    return int(value * units[unit])


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * item_size(self.dtype)


@dataclass
class _Shard:
    filename: str
    specs: list[TensorSpec]
    header: bytes = b""
    offsets: dict[str, int] = field(default_factory=dict)
    size: int = 0
    remaining: int = 0
    fd: int | None = None


def _header(specs: list[TensorSpec]) -> tuple[bytes, dict[str, int], int]:
    ordered = sorted(specs, key=lambda s: (-item_size(s.dtype), s.name))
    entries: dict[str, dict] = {}
    offset = 0
    rel: dict[str, int] = {}
    for spec in ordered:
        entries[spec.name] = {
            "dtype": DTYPE_NAMES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        rel[spec.name] = offset
        offset += spec.nbytes
    text = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":"))
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    header = struct.pack("<Q", len(raw)) + raw
    return header, {k: v + len(header) for k, v in rel.items()}, len(header) + offset


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int, stem: str = "model") -> list[_Shard]:
    """Group tensors, in the given order, into shards of at most ``max_shard_bytes`` of data."""
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if groups[-1] and size + spec.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    n = len(groups)
    shards = []
    for i, group in enumerate(groups):
        name = f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors"
        header, offsets, total = _header(group)
        shards.append(_Shard(name, group, header, offsets, total, sum(s.nbytes for s in group)))
    return shards


class ShardedWriter:
    """Write planned safetensors shards; tensors arrive as row chunks, in any order.

    ``single_file`` writes one unsharded file with that name and no index (PEFT adapters).
    """

    def __init__(
        self,
        folder: Path,
        specs: list[TensorSpec],
        max_shard_bytes: int,
        stem: str = "model",
        single_file: str | None = None,
    ) -> None:
        names = [s.name for s in specs]
        assert len(set(names)) == len(names), "duplicate tensor names"
        self.folder, self.stem, self.single_file = folder, stem, single_file
        limit = sum(s.nbytes for s in specs) + 1 if single_file else max_shard_bytes
        self.shards = plan_shards(specs, limit, stem)
        if single_file:
            self.shards[0].filename = single_file
        self._where = {s.name: (shard, s) for shard in self.shards for s in shard.specs}
        self._written = dict.fromkeys(names, 0)

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for shard in self.shards for s in shard.specs)

    @property
    def file_bytes(self) -> int:
        return sum(shard.size for shard in self.shards)

    def write(self, name: str, data: torch.Tensor, start_row: int = 0) -> None:
        """Write ``data`` (rows ``start_row:start_row+len(data)`` of tensor ``name``)."""
        shard, spec = self._where[name]
        assert data.dtype == spec.dtype, f"{name}: got {data.dtype}, planned {spec.dtype}"
        per_row = math.prod(spec.shape[1:]) if len(spec.shape) > 1 else 1
        raw = data.contiguous().reshape(-1).view(torch.uint8)
        begin = start_row * per_row * item_size(spec.dtype)
        assert begin + raw.numel() <= spec.nbytes, f"{name}: write past the end of the tensor"
        if shard.fd is None:
            self._open(shard)
        _pwrite_all(shard.fd, raw.numpy(), shard.offsets[name] + begin)
        self._written[name] += raw.numel()
        shard.remaining -= raw.numel()
        if shard.remaining == 0:
            self._close(shard)

    def _open(self, shard: _Shard) -> None:
        path = self.folder / shard.filename
        shard.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _reserve(shard.fd, shard.size)
        _pwrite_all(shard.fd, memoryview(shard.header), 0)
        if shard.remaining == 0:
            self._close(shard)

    def _close(self, shard: _Shard) -> None:
        assert shard.fd is not None
        os.fsync(shard.fd)
        os.close(shard.fd)
        shard.fd = -1

    def abort(self) -> None:
        for shard in self.shards:
            if shard.fd not in (None, -1):
                os.close(shard.fd)
                shard.fd = -1

    def finish(self) -> dict[str, str]:
        """Check that every byte was written, write the index; returns the weight map."""
        for shard in self.shards:
            if shard.fd is None:  # a shard of only empty tensors
                self._open(shard)
        short = [n for n, (_, s) in self._where.items() if self._written[n] != s.nbytes]
        assert not short, f"tensors not fully written: {short[:5]}"
        weight_map = {s.name: shard.filename for shard in self.shards for s in shard.specs}
        if self.single_file is None:
            write_index(self.folder, self.stem, weight_map, self.total_bytes)
        return weight_map


def _reserve(fd: int, size: int) -> None:
    """Allocate the whole shard now, so a full disk fails before its data is computed."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the file system cannot preallocate; the writes will report a full disk
        raise
    except AttributeError:  # not on this platform
        return


def _pwrite_all(fd: int, buf, offset: int) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + (1 << 30)], offset + done)


def write_index(folder: Path, stem: str, weight_map: dict[str, str], total_bytes: int) -> None:
    """``{stem}.safetensors.index.json``: total size and the sorted tensor → shard map (Hugging Face's)."""
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    text = json.dumps(index, indent=2) + "\n"
    (folder / f"{stem}.safetensors.index.json").write_text(text, encoding="utf-8")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write in-memory tensors as one ``.safetensors`` file (what ``safetensors.torch.save_file`` writes)."""
    specs = [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    writer = ShardedWriter(path.parent, specs, max_shard_bytes=0, single_file=path.name)
    try:
        for name, t in tensors.items():
            writer.write(name, t)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
