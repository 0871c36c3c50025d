"""Checkpoints that survive SLURM: atomic, self-describing, pruned, resumable, signal-driven.

Layout (docs/architecture.md)::

    RUN_DIR/checkpoints/
      latest                 the newest complete checkpoint name, replaced last (atomic rename)
      step-00000200/         DeepSpeed save_dir: latest ("ds"), ds/ (ZeRO shards: model, optimizer,
                             scheduler), zero_to_fp32.py, rng/rank-*.json, model_config.json,
                             adapter_config.json + adapter_model.safetensors (LoRA), hermes_state.json

A checkpoint is written to ``.tmp-step-N`` and renamed when every rank has finished; ``hermes_state.json``
is written last, so a folder without it is incomplete and ignored. A kill at any point leaves the
previous checkpoint and the ``latest`` pointer intact. DeepSpeed's own shard files are torch pickles
(``*_model_states.pt``, ``*_optim_states.pt``); everything this module writes is JSON or safetensors.

The output dir must be on a filesystem shared by all nodes (the SLURM preflight checks it).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.fileio import fsync_dir, write_json

CHECKPOINTS, LATEST, STATE_FILE, DS_TAG = "checkpoints", "latest", "hermes_state.json", "ds"
STOP_FILE = "STOP"
# Test hook: rank 0 SIGKILLs itself in the middle of saving this step (shards written, not yet complete).
FAULT_ENV = "HERMES_SFT_FAULT_KILL_IN_SAVE"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = run_dir / CHECKPOINTS
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        if (path / STATE_FILE).is_file() and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one if the pointer is missing or stale."""
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        path = run_dir / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
        if (path / STATE_FILE).is_file():
            return path
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{ckpt}: not a complete checkpoint (no {STATE_FILE}); pass a step-N folder")
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from under ``checkpoint.resume`` (auto | never | PATH)."""
    if resume == "never":
        if complete_checkpoints(run_dir):
            raise ValueError(
                f"output_dir={run_dir} already holds checkpoints; use checkpoint.resume=auto to continue that "
                "run, or choose a new output_dir"
            )
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():  # a run dir or its checkpoints/ folder: take its latest
        run = path.parent if path.name == CHECKPOINTS else path
        path = latest_checkpoint(run) or path
    read_state(path)
    return path


def check_compatible(state: dict[str, Any], ckpt: Path, expected: dict[str, Any], explicit: bool) -> None:
    """Refuse a checkpoint of another model, another world size, or (for ``auto``) another dataset."""
    if state.get("model_fingerprint") != expected["model_fingerprint"]:
        raise ValueError(
            f"{ckpt} was written for a different model (fingerprint {state.get('model_fingerprint')} vs "
            f"{expected['model_fingerprint']}: architecture or LoRA shape differ); use a new output_dir "
            "or the model config of that run"
        )
    if state.get("world_size") != expected["world_size"]:
        raise ValueError(
            f"{ckpt} holds ZeRO-3 shards of {state.get('world_size')} ranks but this run has "
            f"{expected['world_size']}; resume with the same number of GPUs (or export the checkpoint and "
            "start a new run from it with model.path)"
        )
    theirs, ours = state.get("dataset", {}), expected["dataset"]
    changed = [
        k
        for k in ("tokenizer_fingerprint", "template_fingerprint", "config_hash")
        if theirs.get(k) != ours.get(k)
    ]
    if changed and not explicit:
        raise ValueError(
            f"output_dir holds a run on a different dataset ({', '.join(changed)} differ from {ckpt}); use a new "
            "output_dir, or set checkpoint.resume to that checkpoint's path to continue on the new data"
        )


def prepare_resume(
    run_dir: Path, resume: str, expected: dict[str, Any], started_at: float
) -> tuple[Path | None, list[str]]:
    """Rank 0, before the engine exists: the checkpoint to resume from (checked against ``expected``),
    after clearing what an interrupted run left (half-written checkpoints, the STOP file of the run it
    stopped). Returns the path and a note per thing removed."""
    path = resolve_resume(run_dir, resume)
    if path is not None:
        check_compatible(read_state(path), path, expected, explicit=resume not in ("auto", "never"))
    notes = []
    stale = remove_stale_temporaries(run_dir)
    if stale:
        notes.append(f"removed incomplete checkpoint(s) from an interrupted save: {[p.name for p in stale]}")
    stop_file = run_dir / STOP_FILE
    if stop_file.exists() and stop_file.stat().st_mtime < started_at:  # from the run it stopped
        stop_file.unlink()
        notes.append(f"removed {stop_file} left by the previous stop")
    return path, notes


# ---------------------------------------------------------------------------------------------------- RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states as JSON."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        states = [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        torch.cuda.set_rng_state_all(states)


# ------------------------------------------------------------------------------------------------ saving


def save_checkpoint(
    engine,
    run_dir: Path,
    step: int,
    state: dict[str, Any],
    files: dict[str, Any],
    *,
    rank: int,
    keep_last: int,
    exclude_frozen: bool,
    write_extra: Callable[[Path], None] | None = None,
    barrier: Callable[[], None],
) -> Path:
    """Write ``step-N`` atomically on all ranks (collective). ``files`` maps file name → JSON object
    (written by rank 0); ``write_extra(tmp_dir)`` runs on every rank (e.g. the gathered LoRA adapter)."""
    root = run_dir / CHECKPOINTS
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, exclude_frozen_parameters=exclude_frozen)
    (tmp / "rng").mkdir(exist_ok=True)
    write_json(tmp / "rng" / f"rank-{rank:05d}.json", rng_state())
    if write_extra is not None:
        write_extra(tmp)
    barrier()
    if rank == 0:
        if os.environ.get(FAULT_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        for name, obj in files.items():
            write_json(tmp / name, obj)
        write_json(tmp / STATE_FILE, state | {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / f"{LATEST}.tmp"
        pointer_tmp.write_text(final.name + "\n", encoding="utf-8")
        os.replace(pointer_tmp, root / LATEST)
        fsync_dir(root)
        prune(run_dir, keep_last)
    barrier()
    return final


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last`` (never the one ``latest`` names)."""
    keep = latest_checkpoint(run_dir)
    removed = []
    for _, path in complete_checkpoints(run_dir)[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``.tmp-*`` folders left by a save that was killed (rank 0, before training starts)."""
    root = run_dir / CHECKPOINTS
    stale = sorted(root.glob(".tmp-*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# ----------------------------------------------------------------------------------------------- signals


class StopRequest:
    """SIGTERM / SIGUSR1 (SLURM preemption, ``--signal``) or a ``RUN_DIR/STOP`` file ask the run to save a
    checkpoint and exit 0. The flag is all-reduced every step, so every rank stops after the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: Path | None = None) -> None:
        self.stop_file = stop_file
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum).name

    def local(self) -> bool:
        """This rank's view: a signal arrived, or (when given a stop file) the file exists."""
        if self.signal is None and self.stop_file is not None and self.stop_file.exists():
            self.signal = f"stop file {self.stop_file}"
        return self.signal is not None
