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
import errno
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

from data_recipes.outdir import DiskFullError
from train import checksums
from train.distributed import all_gather_objects
from train.fileio import fsync_dir, write_json
from train.safe_load import SafeCheckpointLoading

CHECKPOINTS, LATEST, STATE_FILE, DS_TAG = "checkpoints", "latest", "hermes_state.json", "ds"
STOP_FILE = "STOP"
# Test hook: rank 0 SIGKILLs itself in the middle of saving this step (shards written, not yet complete).
FAULT_ENV = "HERMES_SFT_FAULT_KILL_IN_SAVE"
# Test hook: every rank fails its save of this step with ENOSPC after DeepSpeed wrote its shards.
FAULT_ENOSPC_ENV = "HERMES_SFT_FAULT_ENOSPC_IN_SAVE"


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


def checkpoint_problems(ckpt: Path) -> list[str]:
    """Files of ``ckpt`` that differ from the checksums in its ``hermes_state.json`` (empty when intact, or
    when it was written before checkpoints carried checksums)."""
    recorded = read_state(ckpt).get("checksums")
    return checksums.mismatches(ckpt, recorded) if recorded else []


def _newest_intact(run_dir: Path, check: Callable[[Path], None]) -> tuple[Path | None, list[str]]:
    """``latest`` if its files match their checksums, else the newest complete checkpoint that does
    (``check`` runs on each candidate first: refusing a checkpoint needs no hashing of its files)."""
    first = latest_checkpoint(run_dir)
    candidates = [first] + [p for _, p in reversed(complete_checkpoints(run_dir)) if p != first]
    notes = []
    for path in candidates if first is not None else []:
        check(path)
        problems = checkpoint_problems(path)
        if not problems:
            return path, notes
        notes.append(
            f"{path.name} is corrupt ({problems[0]}); falling back to the previous complete checkpoint"
        )
    if notes:
        raise ValueError(
            f"{run_dir}: no intact checkpoint to resume from: "
            + "; ".join(notes)
            + ". Start a new output_dir"
        )
    return None, notes


def resolve_resume(
    run_dir: Path, resume: str, check: Callable[[Path], None] = lambda path: None
) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from under ``checkpoint.resume`` (auto | never | PATH), ``check``-ed and
    then its checksums verified, and a note per corrupt checkpoint skipped (``auto`` falls back to the
    previous complete one; an explicit checkpoint is refused)."""
    if resume == "never":
        if complete_checkpoints(run_dir):
            raise ValueError(
                f"output_dir={run_dir} already holds checkpoints; use checkpoint.resume=auto to continue that "
                "run, or choose a new output_dir"
            )
        return None, []
    if resume == "auto":
        return _newest_intact(run_dir, check)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():  # a run dir or its checkpoints/ folder: take its latest
        run = path.parent if path.name == CHECKPOINTS else path
        path = latest_checkpoint(run) or path
    read_state(path)
    check(path)
    problems = checkpoint_problems(path)
    if problems:
        raise ValueError(
            f"checkpoint.resume={resume}: {problems[0]}; name another checkpoint, or use checkpoint.resume=auto "
            "to fall back to the newest intact one"
        )
    return path, []


DATASET_KEYS = ("tokenizer_fingerprint", "template_fingerprint", "config_hash", "content_fingerprint")


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
    recorded, base = (state.get("lora") or {}).get("base_fingerprint"), expected.get("base")
    if recorded and base and checksums.weights_fingerprint(Path(base)) != recorded:
        raise ValueError(
            f"{ckpt}: its LoRA adapter was trained on a base with weights fingerprint {recorded}, but "
            f"model.path={base} holds other weights; resume with that base, or use a new output_dir"
        )
    theirs, ours = state.get("dataset", {}), expected["dataset"]
    # A key the checkpoint does not record (written by an older version) is not a difference.
    changed = [k for k in DATASET_KEYS if k in theirs and theirs.get(k) != ours.get(k)]
    if changed and not explicit:
        raise ValueError(
            f"output_dir holds a run on a different dataset ({', '.join(changed)} differ from {ckpt}); use a new "
            "output_dir, or set checkpoint.resume to that checkpoint's path to continue on the new data"
        )


def prepare_resume(
    run_dir: Path, resume: str, expected: dict[str, Any], started_at: float
) -> tuple[Path | None, list[str]]:
    """Rank 0, before the engine exists: the checkpoint to resume from (checksums and identity checked
    against ``expected``), after clearing what an interrupted run left (half-written checkpoints, the STOP
    file of the run it stopped). Returns the path and a note per thing skipped or removed."""
    explicit = resume not in ("auto", "never")
    path, notes = resolve_resume(
        run_dir, resume, lambda p: check_compatible(read_state(p), p, expected, explicit)
    )
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


def load_checkpoint(engine, ckpt: Path, rank: int, strict: bool) -> dict[str, Any]:
    """Load ``ckpt`` into the DeepSpeed engine and this rank's RNG; returns its ``hermes_state.json``.

    Every file ``engine.load_checkpoint`` opens (model, optimizer and scheduler states) goes through
    :class:`SafeCheckpointLoading`: DeepSpeed's own checkpoint engine unpickles with ``weights_only=False``,
    i.e. runs whatever a tampered file says."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointLoading):
        engine.checkpoint_engine = SafeCheckpointLoading(engine.checkpoint_engine)
    load_path, _ = engine.load_checkpoint(str(ckpt), tag=DS_TAG, load_module_strict=strict)
    if load_path is None:
        raise ValueError(f"{ckpt}: DeepSpeed could not load the checkpoint (is {ckpt}/{DS_TAG} complete?)")
    restore_rng(ckpt, rank)
    return read_state(ckpt)


def restore_rng(ckpt: Path, rank: int) -> None:
    """This rank's generator states from ``ckpt/rng/rank-R.json`` (absent in older checkpoints: kept)."""
    rng_file = ckpt / "rng" / f"rank-{rank:05d}.json"
    if rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))


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
    (written by rank 0); ``write_extra(tmp_dir)`` runs on every rank (e.g. the gathered LoRA adapter).
    Every file is hashed into ``hermes_state.json`` (each rank hashes a share).
    A full disk raises :class:`DiskFullError` after removing the partial folder."""
    root = run_dir / CHECKPOINTS
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    try:
        _write_shards(engine, tmp, step, rank, exclude_frozen, write_extra)
        barrier()
        if rank == 0:
            if os.environ.get(FAULT_ENV) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            for name, obj in files.items():
                write_json(tmp / name, obj)
        barrier()
        names = checksums.tree_files(tmp, skip=[STATE_FILE])
        world = len(all_gather_objects(None))
        shares = all_gather_objects(checksums.digests(tmp, names[rank::world]))
        if rank == 0:
            hashed = {k: v for share in shares for k, v in share.items()}
            state = state | {"checksums": checksums.manifest(hashed)}
            _publish(tmp, final, root, state, keep_last)
    except Exception as err:
        raise _disk_full_or(err, tmp, root, run_dir, rank) from err
    barrier()
    return final


def _write_shards(engine, tmp: Path, step: int, rank: int, exclude_frozen: bool, write_extra) -> None:
    """Every rank's files: DeepSpeed's shards, this rank's RNG state, the ``write_extra`` files."""
    engine.save_checkpoint(str(tmp), tag=DS_TAG, exclude_frozen_parameters=exclude_frozen)
    if os.environ.get(FAULT_ENOSPC_ENV) == str(step):  # fault-injection seam for the disk-full path
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    (tmp / "rng").mkdir(exist_ok=True)
    write_json(tmp / "rng" / f"rank-{rank:05d}.json", rng_state())
    if write_extra is not None:
        write_extra(tmp)


def _publish(tmp: Path, final: Path, root: Path, state: dict[str, Any], keep_last: int) -> None:
    """Rank 0: ``hermes_state.json`` last, rename into place, move ``latest``, prune."""
    write_json(tmp / STATE_FILE, state | {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = root / f"{LATEST}.tmp"
    pointer_tmp.write_text(final.name + "\n", encoding="utf-8")
    os.replace(pointer_tmp, root / LATEST)
    fsync_dir(root)
    prune(root.parent, keep_last)


def _disk_full_or(err: Exception, tmp: Path, root: Path, run_dir: Path, rank: int) -> Exception:
    """``err`` as :class:`DiskFullError` when the file system is out of space (ENOSPC anywhere in the
    chain, or less free space than the last checkpoint took: DeepSpeed's C++ writer only says ``iostream
    error``); otherwise ``err`` itself. The partial folder is removed in both cases (rank 0)."""
    needed = max((_folder_bytes(p) for _, p in complete_checkpoints(run_dir)), default=0)
    needed = max(needed, _folder_bytes(tmp) if tmp.exists() else 0)
    free = shutil.disk_usage(root).free if root.exists() else 0
    chain, enospc = err, False
    while chain is not None:
        enospc |= isinstance(chain, OSError) and chain.errno == errno.ENOSPC
        chain = chain.__cause__ or chain.__context__
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (enospc or free < needed):
        return err
    hint = "lower checkpoint.keep_last; the previous checkpoint is intact: resume with checkpoint.resume=auto"
    return DiskFullError(tmp, needed, f"checkpoint {tmp.name}", hint=hint)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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
