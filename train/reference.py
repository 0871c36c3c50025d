"""Per-sequence log-probs, and the DPO reference model's log-probs of every pair side.

Two ways to get the reference (``dpo.reference``):

``adapter`` (LoRA)
    The same engine with the PEFT adapter disabled (``PeftModel.disable_adapter``): the frozen base *is*
    the reference, so there is no second copy of the weights; it costs one extra no-grad forward per
    micro-batch (what TRL does for PEFT models).
``precomputed`` (full weights; optional with LoRA)
    Before the first step, one no-grad pass of the initial weights over the train and eval splits
    (rows spread over the ranks; ZeRO-3 forwards stay in lockstep); the per-sequence sums are
    all-reduced and written by rank 0 to ``RUN_DIR/reference/{train,eval}.safetensors`` (``logps``
    float64 in dataset row order, ``row_offsets`` int64: row ``r``'s sequences are
    ``logps[row_offsets[r]:row_offsets[r + 1]]``) with ``RUN_DIR/reference/meta.json`` naming the dataset
    and initial model. A resumed run (or a restart before the first checkpoint) reuses the files when
    the meta matches; otherwise they are recomputed *before* the checkpoint is loaded, i.e. from the same
    initial weights (``model.path`` or the seeded preset).
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from train.data import MicroBatch, collate, eval_slices
from train.distributed import on_rank0
from train.fileio import write_json
from train.loss import trained_logits

REFERENCE_DIR = "reference"
FORMAT_VERSION = 1


def sequence_logps(
    model: torch.nn.Module, mb: MicroBatch, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of trained-token log-probs per sequence [S] in fp32, trained tokens per sequence [S]).

    One forward over the flattened micro-batch; only trained positions reach the LM head. A target never
    crosses a sequence: every sequence starts with an untrained BOS and labels are shifted inside rows.
    """
    device = device or next(model.parameters()).device
    logits = trained_logits(model, mb, device)
    token_logps = -F.cross_entropy(logits, mb.targets.to(device), reduction="none")
    num_seqs = len(mb.seq_lengths)
    seq_of_pos = torch.repeat_interleave(
        torch.arange(num_seqs), torch.tensor(mb.seq_lengths, dtype=torch.long)
    )
    seq_of_target = seq_of_pos[mb.target_index].to(device)
    sums = torch.zeros(num_seqs, dtype=torch.float32, device=device).index_add(0, seq_of_target, token_logps)
    return sums, torch.bincount(seq_of_target, minlength=num_seqs)


class AdapterReference:
    """The policy engine with its LoRA adapter disabled, under no_grad."""

    def __init__(self, engine, peft_model, device: torch.device) -> None:
        if peft_model is None:
            raise ValueError("dpo.reference=adapter needs lora.enabled=true")
        self.engine, self.peft_model, self.device = engine, peft_model, device

    @torch.no_grad()
    def logps(self, mb: MicroBatch, split: str) -> torch.Tensor:
        with self.peft_model.disable_adapter():
            return sequence_logps(self.engine, mb, self.device)[0]


class PrecomputedReference:
    """Reference log-probs looked up by dataset row (see the module docstring)."""

    def __init__(self, tables: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.tables = tables

    def logps(self, mb: MicroBatch, split: str) -> torch.Tensor:
        logps, offsets = self.tables[split]
        parts = [logps[offsets[r] : offsets[r + 1]] for r in mb.row_ids]
        values = np.concatenate(parts) if parts else np.zeros(0)
        if len(values) != len(mb.seq_lengths):
            raise ValueError(
                f"reference log-probs of rows {mb.row_ids} hold {len(values)} sequences, the rows "
                f"{len(mb.seq_lengths)}; delete {REFERENCE_DIR}/ in the run dir to recompute them"
            )
        return torch.from_numpy(values)

    @classmethod
    def load_or_compute(cls, host) -> PrecomputedReference:
        folder = host.run_dir / REFERENCE_DIR
        meta = reference_meta(host)
        splits = {"train": host.train_ds, "eval": host.eval_ds}
        reuse = on_rank0(lambda: _matches(folder, meta, splits), host.rank, host.world)
        if reuse:
            host._info(f"reference log-probs: reusing {folder}")
            return cls(
                {name: _read(folder / f"{name}.safetensors") for name in splits if splits[name] is not None}
            )
        tables = {}
        for name, dataset in splits.items():
            if dataset is not None:
                tables[name] = compute_split(host, dataset, name)
        on_rank0(lambda: _write(folder, tables, meta), host.rank, host.world)
        return cls(tables)


def reference_meta(host) -> dict[str, Any]:
    cfg = host.cfg
    return {
        "format_version": FORMAT_VERSION,
        "dataset": host.dataset_id,
        "eval_split": cfg.data.eval_split,
        "eval_max_rows": cfg.data.eval_max_rows,
        "model_fingerprint": host.fingerprint,
        "initial_weights": {"path": str(Path(cfg.model.path).resolve())}
        if cfg.model.path
        else {"preset": cfg.model.preset, "overrides": cfg.model.overrides, "seed": cfg.seed},
    }


def _matches(folder: Path, meta: dict[str, Any], splits: dict[str, Any]) -> bool:
    path = folder / "meta.json"
    if not path.is_file():
        return False
    saved = json.loads(path.read_text(encoding="utf-8"))
    files = all((folder / f"{name}.safetensors").is_file() for name, ds in splits.items() if ds is not None)
    return files and json.loads(json.dumps(meta, default=str)) == saved


def row_offsets(dataset) -> np.ndarray:
    """Offsets of each row's sequences in the flat per-sequence array."""
    lengths = dataset.data.column("seq_lengths").combine_chunks().value_lengths().to_numpy()
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@torch.no_grad()
def compute_split(host, dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One no-grad pass over ``dataset`` on every rank; returns (per-sequence logps, row offsets)."""
    offsets = row_offsets(dataset)
    buf = torch.zeros(int(offsets[-1]), dtype=torch.float64)
    slices = eval_slices(len(dataset), host.layout, host.rank, None)
    host._info(f"reference log-probs: {name} split, {len(dataset):,} rows, {int(offsets[-1]):,} sequences")
    host.engine.eval()
    disabled = host.peft_model.disable_adapter() if host.peft_model is not None else nullcontext()
    vocab = host.hf_config.vocab_size
    with disabled:
        for k, (rows, weight) in enumerate(slices):
            mb = collate(dataset, rows, vocab, weight=weight)
            values = sequence_logps(host.engine, mb, host.device)[0].double().cpu()
            if weight:
                at = 0
                for r in rows:
                    n = int(offsets[r + 1] - offsets[r])
                    buf[offsets[r] : offsets[r + 1]] = values[at : at + n]
                    at += n
            if (k + 1) % max(1, len(slices) // 10) == 0:
                host._info(f"reference log-probs: {name} {k + 1}/{len(slices)} micro-batches")
    host.engine.train()
    if not torch.isfinite(buf).all():
        raise ValueError(f"reference log-probs of the {name} split are not finite; check the initial weights")
    reduced = buf.to(host.device)
    dist.all_reduce(reduced)  # each sequence is scored by exactly one rank
    return reduced.cpu().numpy(), offsets


def _write(folder: Path, tables: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)  # written last: files without it are never reused
    for name, (logps, offsets) in tables.items():
        tmp = folder / f".{name}.tmp-{os.getpid()}.safetensors"
        save_file({"logps": torch.from_numpy(logps), "row_offsets": torch.from_numpy(offsets)}, str(tmp))
        os.replace(tmp, folder / f"{name}.safetensors")
    write_json(folder / "meta.json", meta)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    tensors = load_file(str(path))
    return tensors["logps"].numpy(), tensors["row_offsets"].numpy()
