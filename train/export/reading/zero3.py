"""DeepSpeed ZeRO-3 checkpoints, read lazily, through a loader that executes nothing from the pickles.


Load DeepSpeed's pickled checkpoint files without executing anything from them.

DeepSpeed writes ``*_model_states.pt`` / ``*_optim_states.pt`` with ``torch.save``; besides tensors
and builtins they pickle a few of its own objects (``ZeroStageEnum``, ``LossScaler``, sometimes
config objects). We load with ``torch.load(weights_only=True)`` — torch's restricted unpickler, which
only rebuilds tensors and plain containers — and map every non-torch global the file names to an
inert placeholder class (:class:`Opaque`) that records its arguments and state and runs no code. The
list of globals comes from ``torch.serialization.get_unsafe_globals_in_checkpoint``, which scans the
pickle without executing it. So even a hostile file cannot run code here, and DeepSpeed itself does
not need to be importable.

Files are memory-mapped (``mmap=True``): opening a 70B optimizer shard costs no RAM; the master
weights are read region by region later (:func:`open_zero3` below).

Read a DeepSpeed ZeRO-3 checkpoint's weights straight from its partitioned files, lazily.

Layout (DeepSpeed 0.17–0.19, what ``engine.save_checkpoint(dir, tag)`` writes under ``dir/tag/``):

* ``zero_pp_rank_R_mp_rank_00_model_states.pt`` (one per data-parallel rank R): ``param_shapes`` (a
  list, per optimizer param group, of ordered ``name → shape``; the order is the flattening order),
  ``buffer_names`` and the buffers in ``module``, ``shared_params`` (alias → owner),
  ``frozen_param_shapes`` / ``frozen_param_fragments`` (parameters outside the optimizer, each rank's
  padded partition), ``ds_version``.
* ``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt``: ``optimizer_state_dict`` with ``zero_stage``,
  ``partition_count`` and ``fp32_flat_groups`` — rank R's fp32 master weights, one flat tensor per
  param group. Parameter *p* with *n* elements owns ``ceil(n / world)`` consecutive elements of every
  rank's flat space (the last rank's share is zero-padded); element *e* of *p* sits on rank
  ``e // part`` at ``offset_p + e % part``.

This is the same reconstruction as DeepSpeed's ``zero_to_fp32`` (the tests compare the two tensor for
tensor), but every parameter is a :class:`~train.export.reading.tensors.LazyTensor` that copies out only the
rows asked for and then releases the mapped pages, so memory stays at one chunk for any model size.
Files are opened through :func:`load_deepspeed_file` above (``weights_only`` with inert placeholders).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.export.reading.tensors import InMemoryTensor, LazyTensor, copy_and_release


class Opaque:
    """Stands in for a class from the pickle; keeps what the pickle passed to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} args={self.args!r}>"


_STUBS: dict[str, type] = {}


def _stub(qualified: str) -> tuple[type, str]:
    if qualified not in _STUBS:
        _STUBS[qualified] = type(qualified.rsplit(".", 1)[-1], (Opaque,), {"qualified_name": qualified})
    return _STUBS[qualified], qualified


def opaque_value(value: Any) -> Any:
    """The plain value behind a placeholder (e.g. ``ZeroStageEnum(3)`` → 3), else ``value``."""
    if isinstance(value, Opaque) and len(value.args) == 1:
        return value.args[0]
    return value


def load_deepspeed_file(path: str | os.PathLike) -> tuple[dict[str, Any], bool]:
    """The unpickled dict and whether its tensors are memory-mapped.

    Raises ValueError naming the file when it cannot be read (truncated, not a torch file).
    """
    path = Path(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # torch raises several types for a damaged zip
        raise ValueError(f"{path}: unreadable checkpoint file ({err}); the save may be incomplete") from err
    stubs = [_stub(n) for n in names]
    mapped = True
    try:
        with torch.serialization.safe_globals(stubs):
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                mapped = False  # a legacy (non-zip) file cannot be mapped: it is read whole
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint file ({err}); the save may be incomplete") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict, found {type(state).__name__}; not a DeepSpeed checkpoint")
    return state, mapped


_FILE_RE = re.compile(r"^(?:\w+_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_(model|optim)_states\.pt$")


@dataclass
class _RankSpace:
    """One rank's flat space: consecutive flat tensors (param groups) and their start offsets."""

    groups: list[torch.Tensor]
    starts: list[int]
    mapped: bool

    def read_into(self, out: torch.Tensor, start: int, stop: int) -> None:
        """Copy flat elements ``start:stop`` into ``out`` (1-D, ``stop - start`` long), then release them."""
        done = 0
        for g, base in zip(self.groups, self.starts, strict=True):
            lo, hi = max(start, base), min(stop, base + g.numel())
            if lo < hi:
                copy_and_release(out[done : done + hi - lo], g[lo - base : hi - base], self.mapped)
                done += hi - lo
        assert done == stop - start, "read outside the flat partitions"


class PartitionedTensor(LazyTensor):
    """A parameter split into equal, padded partitions over the ranks' flat spaces."""

    def __init__(
        self, spaces: list[_RankSpace], offset: int, shape: tuple[int, ...], dtype: torch.dtype
    ) -> None:
        self.spaces, self.offset, self.shape, self.dtype = spaces, offset, tuple(shape), dtype
        self.part = math.ceil(self.numel / len(spaces)) if self.numel else 0

    def rows(self, start: int, stop: int) -> torch.Tensor:
        per_row = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        first, last = start * per_row, stop * per_row
        flat = torch.empty(last - first, dtype=self.dtype)
        e = first
        while e < last:
            rank, local = divmod(e, self.part)
            take = min(last - e, self.part - local)
            self.spaces[rank].read_into(
                flat[e - first : e - first + take], self.offset + local, self.offset + local + take
            )
            e += take
        if not self.shape:
            return flat
        return flat.reshape((stop - start, *self.shape[1:]))


@dataclass
class ZeroCheckpoint:
    """Weights of one ZeRO-3 checkpoint, by the names the training module used."""

    ds_dir: Path
    world_size: int
    ds_version: str | None
    tensors: dict[str, LazyTensor]
    trainable: list[str]
    frozen: list[str]
    global_steps: int | None = None
    notes: list[str] = field(default_factory=list)


def _rank_files(ds_dir: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    model: dict[int, Path] = {}
    optim: dict[int, Path] = {}
    for path in sorted(ds_dir.iterdir()):
        m = _FILE_RE.match(path.name)
        if not m:
            continue
        if m.group(2) != "00":
            raise ValueError(
                f"{path}: tensor/model-parallel checkpoints (mp_rank {m.group(2)}) are not supported"
            )
        (model if m.group(3) == "model" else optim)[int(m.group(1))] = path
    if not model or not optim:
        kind = "*_model_states.pt" if not model else "*_optim_states.pt"
        raise ValueError(f"{ds_dir}: no {kind} files; not a complete DeepSpeed ZeRO checkpoint")
    return model, optim


def _check_ranks(ds_dir: Path, files: dict[int, Path], world: int, kind: str) -> None:
    if sorted(files) != list(range(world)):
        have = ", ".join(str(r) for r in sorted(files))
        raise ValueError(
            f"{ds_dir}: expected {kind} files for ranks 0..{world - 1}, found ranks [{have}]; "
            "the checkpoint is incomplete (a rank did not finish saving) — use an earlier checkpoint"
        )


def open_zero3(ds_dir: str | Path) -> ZeroCheckpoint:
    """Open the tag folder of a ZeRO-3 save (the one holding the ``*_states.pt`` files)."""
    ds_dir = Path(ds_dir)
    model_files, optim_files = _rank_files(ds_dir)
    optim = {r: load_deepspeed_file(p) for r, p in optim_files.items()}
    osd0 = optim[min(optim)][0].get("optimizer_state_dict")
    if not isinstance(osd0, dict) or "zero_stage" not in osd0:
        raise ValueError(f"{optim_files[min(optim)]}: no ZeRO optimizer state; not a ZeRO checkpoint")
    stage = int(opaque_value(osd0["zero_stage"]))
    if stage != 3:
        raise ValueError(
            f"{ds_dir}: ZeRO stage {stage} checkpoint; this exporter reads ZeRO-3 partitions. Convert it with "
            "DeepSpeed's zero_to_fp32.py --safe_serialization and export the resulting folder"
        )
    world = opaque_value(osd0["partition_count"])
    world = max(world) if isinstance(world, list) else int(world)
    _check_ranks(ds_dir, optim_files, world, "*_optim_states.pt")
    _check_ranks(ds_dir, model_files, world, "*_model_states.pt")
    models = {r: load_deepspeed_file(p) for r, p in model_files.items()}
    spaces = []
    for r in range(world):
        state, mapped = optim[r]
        groups = list(state["optimizer_state_dict"]["fp32_flat_groups"])
        starts = [0, *list(_cumsum([g.numel() for g in groups]))[:-1]]
        spaces.append(_RankSpace(groups, starts, mapped))
    ms0 = models[0][0]
    tensors, trainable = _trainable(ds_dir, ms0, spaces)
    frozen = _frozen(models, world, tensors)
    for name in ms0.get("buffer_names") or []:
        tensors[name] = InMemoryTensor(ms0["module"][name].clone())
    for alias, owner in (ms0.get("shared_params") or {}).items():
        if owner in tensors:
            tensors[alias] = tensors[owner]
    version = ms0.get("ds_version")
    steps = ms0.get("global_steps")
    return ZeroCheckpoint(ds_dir, world, str(version) if version else None, tensors, trainable, frozen, steps)


def _cumsum(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def _trainable(
    ds_dir: Path, ms0: dict[str, Any], spaces: list[_RankSpace]
) -> tuple[dict[str, LazyTensor], list[str]]:
    shapes: dict[str, Any] = {}
    for group in ms0.get("param_shapes") or []:
        shapes.update(group)
    dtype = spaces[0].groups[0].dtype if spaces[0].groups else torch.float32
    available = sum(g.numel() for g in spaces[0].groups)
    tensors: dict[str, LazyTensor] = {}
    offset = 0
    for name, shape in shapes.items():
        t = PartitionedTensor(spaces, offset, tuple(shape), dtype)
        tensors[name] = t
        offset += t.part
    if offset != available:
        raise ValueError(
            f"{ds_dir}: the parameter list accounts for {offset} elements per rank but the fp32 partitions "
            f"hold {available}; the checkpoint is corrupt or its files come from different saves"
        )
    return tensors, list(shapes)


def _frozen(models: dict[int, tuple[dict, bool]], world: int, tensors: dict[str, LazyTensor]) -> list[str]:
    shapes = models[0][0].get("frozen_param_shapes") or {}
    names = []
    for name, shape in shapes.items():
        frags = [models[r][0].get("frozen_param_fragments", {}).get(name) for r in range(world)]
        if any(f is None for f in frags):
            raise ValueError(f"frozen parameter {name} is missing from some ranks' model_states files")
        spaces = [_RankSpace([f.reshape(-1)], [0], models[r][1]) for r, f in enumerate(frags)]
        t = PartitionedTensor(spaces, 0, tuple(shape), frags[0].dtype)
        if t.numel and frags[0].numel() != t.part:
            raise ValueError(
                f"frozen parameter {name}: fragment size {frags[0].numel()} != expected {t.part}"
            )
        tensors[name] = t
        names.append(name)
    return names
