"""Load torch pickles (DeepSpeed's ``*_states.pt``) without executing anything from them.

The one home of the pickle-safe loader, used by the export's ZeRO-3 reader (``inert=True``) and by the
trainer's resume (``inert=False``), which routes every file ``engine.load_checkpoint`` opens through
:class:`SafeCheckpointLoading`.

DeepSpeed writes ``*_model_states.pt`` / ``*_optim_states.pt`` with ``torch.save``; besides tensors and
builtins they pickle a few of its own objects. In DeepSpeed 0.19.8 (scanned with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on full and LoRA ZeRO-3 saves): the model-states
files name no global outside torch's own safe set; the optimizer files name
``deepspeed.runtime.zero.config.ZeroStageEnum`` (an ``Enum``, rebuilt by ``ZeroStageEnum(3)``) and
``deepspeed.runtime.fp16.loss_scaler.LossScaler`` (rebuilt by ``__new__`` plus a ``__dict__`` update:
no method of it runs). Those two, plus ``DynamicLossScaler`` (fp16 runs), are :data:`DEEPSPEED_ALLOWED`.

Every file is read with ``torch.load(weights_only=True)`` — torch's restricted unpickler, which only
rebuilds tensors, plain containers and the globals passed to it. The list of globals a file names is read
first by scanning the pickle (nothing executed):

* ``inert=True`` (export, verify): each non-torch global becomes an inert placeholder (:class:`Opaque`) that
  records its arguments and runs no code, so DeepSpeed need not even be importable;
* ``inert=False`` (resume): allowlisted DeepSpeed classes are the real ones (DeepSpeed's loader compares
  them); any other global refuses the file, naming it — ``os.system`` in a tampered file is refused before
  a byte of the pickle is executed.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

DEEPSPEED_ALLOWED = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)


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


def _real_class(qualified: str) -> tuple[type, str]:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name), qualified


def _globals_for(path: Path, inert: bool) -> list[tuple[type, str]]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # torch raises several types for a damaged zip
        raise ValueError(f"{path}: unreadable checkpoint file ({err}); the save may be incomplete") from err
    if inert:
        return [_stub(n) for n in names]
    refused = sorted(set(names) - set(DEEPSPEED_ALLOWED))
    if refused:
        raise ValueError(
            f"{path}: the pickle names {refused}, which a DeepSpeed checkpoint never holds; refusing to load it "
            "(nothing from it was executed). Resume from a checkpoint this run wrote, or delete this one"
        )
    return [_real_class(n) for n in names]


def load_torch_file(
    path: str | os.PathLike, *, inert: bool = True, mmap: bool = True, map_location: Any = "cpu"
) -> tuple[Any, bool]:
    """The unpickled object and whether its tensors are memory-mapped (see the module doc for ``inert``).

    Raises ValueError naming the file when it cannot be read (truncated, not a torch file) or, with
    ``inert=False``, when it names a global outside :data:`DEEPSPEED_ALLOWED`.
    """
    path = Path(path)
    allowed = _globals_for(path, inert)
    mapped = mmap
    try:
        with torch.serialization.safe_globals(allowed):
            try:
                state = torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as err:
                if not mmap or "mmap" not in str(err):
                    raise
                mapped = False  # a legacy (non-zip) file cannot be mapped: it is read whole
                state = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint file ({err}); the save may be incomplete") from err
    return state, mapped


def load_deepspeed_file(path: str | os.PathLike) -> tuple[dict[str, Any], bool]:
    """A DeepSpeed ``*_states.pt`` file as a dict (inert placeholders for its classes), memory-mapped."""
    state, mapped = load_torch_file(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict, found {type(state).__name__}; not a DeepSpeed checkpoint")
    return state, mapped


class SafeCheckpointLoading:
    """Wraps a DeepSpeed checkpoint engine so that every ``load`` it does (model states, optimizer states,
    and anything else ``engine.load_checkpoint`` opens) goes through :func:`load_torch_file` with the
    DeepSpeed allowlist; saving and everything else are the wrapped engine's.

    Composition, not a subclass: DeepSpeed picks its engine class from the config (torch, fast, decoupled)
    and the wrapper works for all of them without importing DeepSpeed here.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        state, _ = load_torch_file(path, inert=False, mmap=False, map_location=map_location)
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
