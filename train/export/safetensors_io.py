"""Streaming safetensors: a positional reader and a planned, sharded writer.

Reader: the header is parsed once; each read is a ``pread`` of exactly the requested rows into a fresh
buffer, so memory is the rows asked for (no mmap, nothing stays resident).

Writer: every tensor's shape and dtype is known before any data exists, so the shard layout, the
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

from train.export.tensors import LazyTensor

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


def _item_size(dtype: torch.dtype) -> int:
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


# --- reading ------------------------------------------------------------------------------------


class SafetensorsFile:
    """Header of one ``.safetensors`` file plus positional reads of its tensors."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    raise ValueError("header too large")
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error) as err:
            raise ValueError(f"{self.path}: not a readable safetensors file ({err})") from err
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + length
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        size = self.path.stat().st_size
        for name, info in header.items():
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
            if end - start != math.prod(shape) * _item_size(dtype) or self.data_start + end > size:
                raise ValueError(f"{self.path}: tensor {name} lies outside the file (truncated?)")
            self.entries[name] = (dtype, shape, start, end)

    def tensor(self, name: str) -> SafetensorsTensor:
        dtype, shape, start, _ = self.entries[name]
        return SafetensorsTensor(self.path, self.data_start + start, shape, dtype)


class SafetensorsTensor(LazyTensor):
    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype

    def rows(self, start: int, stop: int) -> torch.Tensor:
        per_row = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        count = (stop - start) * per_row
        out = torch.empty(count, dtype=self.dtype)
        if count:
            buf = out.view(torch.uint8).numpy()
            _pread_into(self.path, buf, self.offset + start * per_row * out.element_size())
        if not self.shape:
            return out
        return out.reshape((stop - start, *self.shape[1:]))


def _pread_into(path: Path, buf, offset: int) -> None:
    view = memoryview(buf).cast("B")
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ValueError(f"{path}: unexpected end of file (truncated?)")
            done += n
    finally:
        os.close(fd)


def read_safetensors_folder(folder: str | os.PathLike, stem: str = "model") -> dict[str, LazyTensor]:
    """Every tensor of a Hugging Face folder (``{stem}.safetensors`` or an index of shards), lazily."""
    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    single = folder / f"{stem}.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {
            f: SafetensorsFile(folder / f) for f in sorted(set(weight_map.values())) if _exists(folder / f)
        }
        missing = sorted(set(weight_map.values()) - set(files))
        if missing:
            raise ValueError(f"{folder}: shards listed in {index.name} are missing: {', '.join(missing[:5])}")
        out: dict[str, LazyTensor] = {}
        for name, file in weight_map.items():
            if name not in files[file].entries:
                raise ValueError(f"{folder}: {index.name} puts {name} in {file}, which does not hold it")
            out[name] = files[file].tensor(name)
        return out
    if single.is_file():
        st = SafetensorsFile(single)
        return {name: st.tensor(name) for name in st.entries}
    raise ValueError(f"{folder}: no {stem}.safetensors or {index.name}")


def _exists(path: Path) -> bool:
    return path.is_file()


# --- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _item_size(self.dtype)


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
    ordered = sorted(specs, key=lambda s: (-_item_size(s.dtype), s.name))
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
        begin = start_row * per_row * _item_size(spec.dtype)
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
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": dict(sorted(weight_map.items())),
            }
            text = json.dumps(index, indent=2) + "\n"
            (self.folder / f"{self.stem}.safetensors.index.json").write_text(text, encoding="utf-8")
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
