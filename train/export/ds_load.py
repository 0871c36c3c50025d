"""Load DeepSpeed's pickled checkpoint files without executing anything from them.

DeepSpeed writes ``*_model_states.pt`` / ``*_optim_states.pt`` with ``torch.save``; besides tensors
and builtins they pickle a few of its own objects (``ZeroStageEnum``, ``LossScaler``, sometimes
config objects). We load with ``torch.load(weights_only=True)`` — torch's restricted unpickler, which
only rebuilds tensors and plain containers — and map every non-torch global the file names to an
inert placeholder class (:class:`Opaque`) that records its arguments and state and runs no code. The
list of globals comes from ``torch.serialization.get_unsafe_globals_in_checkpoint``, which scans the
pickle without executing it. So even a hostile file cannot run code here, and DeepSpeed itself does
not need to be importable.

Files are memory-mapped (``mmap=True``): opening a 70B optimizer shard costs no RAM; the master
weights are read region by region later (see :mod:`train.export.zero3_reader`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


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
