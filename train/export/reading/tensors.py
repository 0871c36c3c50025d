"""Lazy tensors: a weight whose rows are read on demand, so an export never holds a whole model.

Every reader (ZeRO-3 partitions, safetensors shards, torch ``.bin`` files, LoRA merges) exposes the
same tiny interface, :class:`LazyTensor`: a ``shape``, a ``dtype`` and ``rows(start, stop)`` which
returns a fresh tensor with rows ``start:stop`` of the first dimension (elements for 1-D tensors).
Writers consume weights in row chunks of bounded size (:func:`row_chunks`), so peak memory is one
chunk, not one tensor, shard or model.

Tensors memory-mapped from a file (``torch.load(mmap=True)``) keep every page they touched resident
in the process (counted in its RSS) until unmapped. :func:`release_pages` hands the pages of a region
that has been copied out back to the kernel (``madvise(MADV_DONTNEED)``); it is only ever called on
read-only, file-backed private mappings, where the pages are re-read from the file if touched again.

Safetensors reader: the header is parsed once; each read is a ``pread`` of exactly the requested rows.

LoRA adapters (the end of this file): split a PEFT checkpoint into base + adapter, merge lazily, name
the PEFT layout. Merging is row-streamed: ``W'[rows] = W[rows] + scaling * (B[rows] @ A)`` for a Linear
(``(A[:, rows].T @ B.T) * scaling`` for an Embedding), computed in fp32 from the base rows, exactly
PEFT's ``merge_and_unload`` formula (``delta = B @ A * scaling``; ``scaling = alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA; per-module ``rank_pattern`` / ``alpha_pattern``). Only the current
rows of the base and the small factors are ever in memory. Supported: plain LoRA on Linear and
Embedding layers, ``modules_to_save``. Refused with a clear message: DoRA, LoRA biases,
``fan_in_fan_out``, ``target_parameters``, layer replication, trainable token indices, non-LoRA PEFT
methods.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import re
import struct
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.safetensors_io import DTYPES, item_size

DEFAULT_CHUNK_BYTES = 64 << 20
"""Rows are processed in chunks of at most this many bytes of fp32 (one row if a row is larger)."""
RELEASE_BYTES = 16 << 20
"""Mapped source regions are copied and released in steps of this size, so at most this much of a
memory-mapped file is resident at once."""


class LazyTensor(ABC):
    """A read-only tensor whose rows are materialized on demand."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @abstractmethod
    def rows(self, start: int, stop: int) -> torch.Tensor:
        """A new tensor holding rows ``start:stop`` (dimension 0); the caller owns it."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def materialize(self) -> torch.Tensor:
        if not self.shape:
            return self.rows(0, 1).reshape(())
        return self.rows(0, self.shape[0])


@dataclass
class InMemoryTensor(LazyTensor):
    """A tensor already in memory (small tensors, tests, LoRA factors)."""

    tensor: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = tuple(self.tensor.shape)
        self.dtype = self.tensor.dtype

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if not self.shape:
            return self.tensor.reshape(1).clone()
        return self.tensor[start:stop].clone()


class MmapTensor(LazyTensor):
    """A tensor backed by a memory-mapped file; pages are released after each read."""

    def __init__(
        self, tensor: torch.Tensor, shape: tuple[int, ...] | None = None, mapped: bool = True
    ) -> None:
        # only a contiguous tensor's flat view still points into the mapping (reshape would copy)
        self._mapped = mapped and tensor.is_contiguous()
        self._flat = tensor.reshape(-1)
        self.shape = tuple(tensor.shape) if shape is None else tuple(shape)
        self.dtype = tensor.dtype
        assert math.prod(self.shape) <= self._flat.numel(), "view larger than its storage"

    def rows(self, start: int, stop: int) -> torch.Tensor:
        per_row = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        region = self._flat[start * per_row : stop * per_row]
        out = torch.empty(region.numel(), dtype=self.dtype)
        copy_and_release(out, region, self._mapped)
        tail = self.shape[1:] if len(self.shape) > 1 else ()
        return out.reshape((stop - start, *tail)) if self.shape else out


def row_chunks(tensor: LazyTensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges covering ``tensor``, each at most ``chunk_bytes`` of fp32."""
    if not tensor.shape:
        yield 0, 1
        return
    per_row = math.prod(tensor.shape[1:]) if len(tensor.shape) > 1 else 1
    step = max(1, chunk_bytes // max(1, per_row * 4))
    for start in range(0, tensor.shape[0], step):
        yield start, min(tensor.shape[0], start + step)


# --- page release -------------------------------------------------------------------------------


def copy_and_release(out: torch.Tensor, region: torch.Tensor, mapped: bool) -> None:
    """``out.copy_(region)`` (both 1-D); for a mapped region, step by step, releasing each step's pages."""
    if not mapped:
        out.copy_(region)
        return
    step = max(1, RELEASE_BYTES // max(1, region.element_size()))
    advise_pages(region[:step], _MADV_WILLNEED)
    for i in range(0, region.numel(), step):
        part = region[i : i + step]
        advise_pages(region[i + step : i + 2 * step], _MADV_WILLNEED)  # read ahead while this step copies
        out[i : i + step].copy_(part)
        release_pages(part)


_MADV_WILLNEED, _MADV_DONTNEED = 3, 4
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else False
    return _libc.madvise if _libc else None


def advise_pages(region: torch.Tensor, advice: int) -> None:
    """``madvise`` the pages covering ``region`` (rounded outward; for read-ahead hints)."""
    madvise = _madvise()
    if madvise is None or region.numel() == 0:
        return
    page = mmap.PAGESIZE
    begin = region.data_ptr() // page * page
    end = region.data_ptr() + region.numel() * region.element_size()
    madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), advice)


def release_pages(region: torch.Tensor) -> None:
    """Drop the pages lying entirely inside ``region`` from this process's resident set.

    Only for views into read-only, file-backed private mappings (``torch.load(mmap=True)``): their
    pages are clean, so the kernel re-reads them from the file if they are touched again. Never call
    it on anonymous memory (that would zero it). A no-op off Linux.
    """
    madvise = _madvise()
    if madvise is None or region.numel() == 0:
        return
    page = mmap.PAGESIZE
    begin = region.data_ptr()
    end = begin + region.numel() * region.element_size()
    first = -(-begin // page) * page
    last = end // page * page
    if last > first:
        madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


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
            if end - start != math.prod(shape) * item_size(dtype) or self.data_start + end > size:
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


# ------------------------------------------------------------------------------------------ LoRA
_PREFIX = "base_model.model."
_LORA_RE = re.compile(
    r"^(?P<path>.+)\.lora_(?P<kind>embedding_)?(?P<ab>A|B)(?:\.(?P<ad>[^.]+))?(?:\.weight)?$"
)
_SAVE_RE = re.compile(r"^(?P<path>.+)\.modules_to_save\.(?P<ad>[^.]+)\.(?P<leaf>[^.]+)$")
_ORIG_RE = re.compile(r"^(?P<path>.+)\.original_module\.(?P<leaf>[^.]+)$")
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases",
    "fan_in_fan_out": "fan_in_fan_out",
    "target_parameters": "target_parameters",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token indices",
}


@dataclass
class LoraModule:
    path: str
    """The adapted module, by its Hugging Face name (``model.layers.0.self_attn.q_proj``)."""
    a: LazyTensor
    b: LazyTensor
    scaling: float
    embedding: bool = False


@dataclass
class LoraAdapter:
    config: dict[str, Any]
    modules: dict[str, LoraModule]
    overrides: dict[str, LazyTensor] = field(default_factory=dict)
    """``modules_to_save``: full replacement weights, by Hugging Face name."""


def check_adapter_config(config: dict[str, Any]) -> None:
    kind = config.get("peft_type", "LORA")
    kind = str(getattr(kind, "value", kind)).upper()
    if kind != "LORA":
        raise ValueError(f"PEFT method {kind} is not supported; only LoRA adapters export")
    used = [label for key, label in _UNSUPPORTED.items() if config.get(key)]
    if used:
        raise ValueError(
            f"the adapter uses {', '.join(used)}, which the streamed LoRA export does not support"
        )


def _strip(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def split_peft(
    tensors: dict[str, LazyTensor], config: dict[str, Any], adapter_file: bool = False
) -> tuple[dict[str, LazyTensor], LoraAdapter]:
    """Split PEFT-named tensors into base weights (HF names) and the adapter.

    ``adapter_file``: the names come from a saved ``adapter_model.safetensors`` (no adapter name in
    them; every non-LoRA tensor there is a ``modules_to_save`` replacement).
    """
    check_adapter_config(config)
    base: dict[str, LazyTensor] = {}
    factors: dict[str, dict[str, LazyTensor]] = {}
    kinds: dict[str, bool] = {}
    overrides: dict[str, LazyTensor] = {}
    for raw, tensor in tensors.items():
        name = _strip(raw)
        if "lora_magnitude_vector" in name:
            raise ValueError("the adapter uses DoRA, which the streamed LoRA export does not support")
        if m := _LORA_RE.match(name):
            factors.setdefault(m["path"], {})[m["ab"]] = tensor
            kinds[m["path"]] = bool(m["kind"])
        elif m := _SAVE_RE.match(name):
            overrides[f"{m['path']}.{m['leaf']}"] = tensor
        elif m := _ORIG_RE.match(name):
            base[f"{m['path']}.{m['leaf']}"] = tensor
        elif adapter_file:
            overrides[name] = tensor
        else:
            base[name.replace(".base_layer.", ".")] = tensor
    modules = {}
    for path, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA module {path} has only lora_{next(iter(ab))}; the adapter is incomplete")
        rank = ab["A"].shape[0]
        modules[path] = LoraModule(path, ab["A"], ab["B"], _scaling(config, path, rank), kinds[path])
    return base, LoraAdapter(config, modules, overrides)


def _pattern_value(patterns: dict[str, Any] | None, path: str, default: Any) -> Any:
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _scaling(config: dict[str, Any], path: str, rank: int) -> float:
    r = int(_pattern_value(config.get("rank_pattern"), path, config.get("r", rank)))
    alpha = float(_pattern_value(config.get("alpha_pattern"), path, config.get("lora_alpha", r)))
    if r != rank:
        raise ValueError(f"LoRA module {path}: adapter_config says r={r} but its factors have rank {rank}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


class MergedTensor(LazyTensor):
    """``base + scaling * delta`` for one LoRA module, row by row, in fp32."""

    def __init__(self, base: LazyTensor, module: LoraModule) -> None:
        self.base, self.module = base, module
        self.shape, self.dtype = base.shape, torch.float32
        self._a = module.a.materialize().float()
        self._b = module.b.materialize().float()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        w = self.base.rows(start, stop).float()
        if self.module.embedding:
            delta = (self._b @ self._a[:, start:stop]).T
        else:
            delta = self._b[start:stop] @ self._a
        return w + delta * self.module.scaling


def _expected_factor_shapes(module: LoraModule, base_shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    rank = module.a.shape[0]
    if module.embedding:  # base [num_embeddings, dim]; A [r, num_embeddings]; B [dim, r]
        return (rank, base_shape[0]), (base_shape[1], rank)
    return (rank, base_shape[1]), (base_shape[0], rank)  # base [out, in]; A [r, in]; B [out, r]


def merged_view(base: dict[str, LazyTensor], adapter: LoraAdapter) -> dict[str, LazyTensor]:
    """The merged model's tensors (HF names), checking that the base fits the adapter."""
    problems = []
    out = dict(base)
    for path, module in adapter.modules.items():
        weight = f"{path}.weight"
        if weight not in base:
            problems.append(f"{weight} is not in the base model")
            continue
        shape = base[weight].shape
        want_a, want_b = _expected_factor_shapes(module, shape) if len(shape) == 2 else ((), ())
        if (tuple(module.a.shape), tuple(module.b.shape)) != (want_a, want_b):
            problems.append(
                f"{weight}: base {list(shape)} does not fit lora_A {list(module.a.shape)} / lora_B {list(module.b.shape)}"
            )
            continue
        out[weight] = MergedTensor(base[weight], module)
    for name, tensor in adapter.overrides.items():
        if name in base and tuple(base[name].shape) != tuple(tensor.shape):
            problems.append(f"{name}: base {list(base[name].shape)} vs modules_to_save {list(tensor.shape)}")
        out[name] = tensor
    if problems:
        raise ValueError(
            "LoRA merge: the base model's shapes differ from the adapter's ("
            + "; ".join(problems[:6])
            + "). "
            "Pass the base the adapter was trained on with --base-model"
        )
    return out


def adapter_tensors(adapter: LoraAdapter) -> dict[str, LazyTensor]:
    """The adapter under PEFT's saved names (``base_model.model.<path>.lora_A.weight`` …)."""
    out: dict[str, LazyTensor] = {}
    for path, module in adapter.modules.items():
        if module.embedding:
            out[f"{_PREFIX}{path}.lora_embedding_A"] = module.a
            out[f"{_PREFIX}{path}.lora_embedding_B"] = module.b
        else:
            out[f"{_PREFIX}{path}.lora_A.weight"] = module.a
            out[f"{_PREFIX}{path}.lora_B.weight"] = module.b
    for name, tensor in adapter.overrides.items():
        out[f"{_PREFIX}{name}"] = tensor
    return out


def export_adapter_config(config: dict[str, Any], base_path: str | None) -> dict[str, Any]:
    out = dict(config)
    out["inference_mode"] = True
    if base_path:
        out["base_model_name_or_path"] = base_path
    return out
