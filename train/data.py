"""The packed dataset as the trainer sees it: checks, a resumable order, and flattened micro-batches.

Order. The training stream is the concatenation of per-epoch permutations of the train split (seeded
by ``seed`` and the epoch). Step ``s`` takes the next ``global_batch_size`` rows of the stream, so the
only data state is the number of rows consumed: resume is exact, and the global batches do not depend
on the number of ranks. Rank ``r`` takes a contiguous slice of the global batch and splits it into
micro-batches.

Micro-batch. The rows of a micro-batch are concatenated into one sequence of shape [1, T] (no padding).
``position_ids`` restart at 0 for every sample, so attention stays inside each sample: transformers
derives the block-causal mask from them for sdpa/eager, and flash-attention runs varlen. No
``attention_mask`` is ever passed (a 2-D mask would switch that detection off). Labels are shifted
inside each row, so no target crosses a row or a sample; only positions with a target are sent through
the LM head (``logits_to_keep``)::

    row          a0 a1 a2 | b0 b1        (two samples, labels: a1 a2 trained, b1 trained)
    position_ids  0  1  2 |  0  1
    targets       a1 a2  - | b1  -       → target_index = [0, 1, 3]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_recipes.render import IGNORE_INDEX
from data_recipes.tokenizer import template_fingerprint, tokenizer_fingerprint
from train.config import BatchLayout

COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    """[1, T] token ids of the concatenated rows."""
    position_ids: torch.Tensor
    """[1, T] positions restarting at 0 for every sample."""
    target_index: torch.Tensor
    """[n] positions whose next token is trained."""
    targets: torch.Tensor
    """[n] the trained next tokens."""
    row_ids: list[int]
    """Dataset indices of the rows (for error messages)."""
    seq_lengths: list[int]
    """Lengths of the samples, in order (for the attention FLOPs)."""
    weight: float = 1.0
    """0 for the filler batches that keep eval collectives in step across ranks."""
    padding: int = 0
    """Pad tokens at the end (a sequence-parallel slice of a row not divisible by the group size)."""

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1]) - self.padding if self.weight else 0

    @property
    def num_trained(self) -> int:
        return int(self.targets.numel()) if self.weight else 0


def read_manifest(path: str | Path) -> dict[str, Any]:
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(
            f"data.path={path}: no manifest.json; build the dataset with `hermes-sft data build CONFIG --out {path}`"
        )
    return json.loads(manifest_path.read_text(encoding="utf-8"))


def check_manifest(manifest: dict[str, Any], tokenizer, path: str, max_seq_len: int | None) -> None:
    """Refuse a dataset built with another tokenizer or template, or longer rows than configured."""
    ours = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "template_fingerprint": template_fingerprint(),
    }
    for key, value in ours.items():
        if manifest.get(key) != value:
            raise ValueError(
                f"data.path={path}: the dataset was built with {key.replace('_', ' ')} "
                f"{manifest.get(key)!r} but this run uses {value!r}; rebuild it with `hermes-sft data build` "
                "using the same tokenizer as model.tokenizer (and the current chat template)"
            )
    rows_max = manifest.get("max_seq_len")
    if max_seq_len is not None and isinstance(rows_max, int) and rows_max > max_seq_len:
        raise ValueError(
            f"data.path={path}: rows are up to {rows_max} tokens but data.max_seq_len={max_seq_len}; "
            "raise data.max_seq_len (and check the memory plan with `hermes-sft plan`) or rebuild shorter rows"
        )


def dataset_identity(path: str | Path, tokenizer, manifest: dict[str, Any], num_rows: int) -> dict[str, Any]:
    """What a checkpoint records about its training data; ``auto`` resume refuses another dataset."""
    return {
        "path": str(Path(path).resolve()),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "template_fingerprint": template_fingerprint(),
        "config_hash": manifest.get("config_hash"),
        "num_rows": num_rows,
    }


def load_splits(path: str | Path, train_split: str, eval_split: str | None):
    """(train, eval or None) ``datasets.Dataset`` objects, memory-mapped from DATASET_DIR."""
    from datasets import load_from_disk

    try:
        dsd = load_from_disk(str(path))
    except FileNotFoundError as err:
        raise ValueError(f"data.path={path}: not a saved dataset ({err})") from err
    if train_split not in dsd:
        raise ValueError(f"data.path={path}: no split {train_split!r} (has {sorted(dsd)})")
    missing = [c for c in COLUMNS if c not in dsd[train_split].column_names]
    if missing:
        raise ValueError(f"data.path={path}: columns {missing} missing; rebuild with `hermes-sft data build`")
    train = dsd[train_split]
    if len(train) == 0:
        raise ValueError(f"data.path={path}: split {train_split!r} is empty")
    evals = dsd[eval_split] if eval_split and eval_split in dsd and len(dsd[eval_split]) else None
    return train, evals


class DataStream:
    """Global-batch row indices for any number of rows consumed (epochs wrap around)."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool) -> None:
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self._perm: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            perm = np.arange(self.num_rows)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._perm = (epoch, perm)
        return self._perm[1]

    def rows(self, start: int, count: int) -> list[int]:
        """Indices of stream positions ``start .. start + count - 1``."""
        out = []
        for i in range(start, start + count):
            epoch, offset = divmod(i, self.num_rows)
            out.append(int(self.permutation(epoch)[offset]))
        return out


def rank_slices(global_rows: list[int], layout: BatchLayout, rank: int) -> list[list[int]]:
    """This rank's micro-batches (lists of row indices) of one global batch. The ranks of a
    sequence-parallel group get the same rows (each then keeps its slice of every micro-batch)."""
    assert len(global_rows) == layout.global_batch_size
    d = layout.data_rank(rank)
    mine = global_rows[d * layout.rows_per_rank : (d + 1) * layout.rows_per_rank]
    mb = layout.micro_batch_size
    return [mine[i : i + mb] for i in range(0, len(mine), mb)]


def collate(dataset, row_ids: list[int], vocab_size: int, weight: float = 1.0) -> MicroBatch:
    """Fetch rows and build one flattened micro-batch; ValueError names the offending row."""
    data = dataset[row_ids] if row_ids else {c: [] for c in COLUMNS}
    ids: list[int] = []
    pos: list[int] = []
    shifted: list[int] = []
    lengths: list[int] = []
    for k, row in enumerate(row_ids):
        tokens, labels, positions, seq_lengths = (data[c][k] for c in COLUMNS)
        n = len(tokens)
        if not (n == len(labels) == len(positions) == sum(seq_lengths)) or n == 0:
            raise ValueError(f"dataset row {row}: input_ids/labels/position_ids/seq_lengths lengths disagree")
        if positions[0] != 0:
            raise ValueError(f"dataset row {row}: position_ids must start at 0 (got {positions[0]})")
        ids.extend(tokens)
        pos.extend(positions)
        shifted.extend([*labels[1:], IGNORE_INDEX])  # shift inside the row: no target crosses rows
        lengths.extend(seq_lengths)
    input_ids = torch.tensor([ids], dtype=torch.long)
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(
            f"dataset rows {row_ids}: token ids outside the model vocabulary (size {vocab_size})"
        )
    labels_t = torch.tensor(shifted, dtype=torch.long)
    target_index = (labels_t != IGNORE_INDEX).nonzero().view(-1)
    return MicroBatch(
        input_ids=input_ids,
        position_ids=torch.tensor([pos], dtype=torch.long),
        target_index=target_index,
        targets=labels_t[target_index],
        row_ids=list(row_ids),
        seq_lengths=lengths,
        weight=weight,
    )


def eval_slices(
    num_rows: int, layout: BatchLayout, rank: int, max_rows: int | None
) -> list[tuple[list[int], float]]:
    """This rank's eval micro-batches as (row ids, weight). Every rank gets the same number of
    micro-batches (ZeRO-3 forwards are collectives); ranks that run out repeat row 0 with weight 0."""
    total = min(num_rows, max_rows) if max_rows else num_rows
    mb, world = layout.micro_batch_size, layout.data_parallel
    mine = list(range(layout.data_rank(rank), total, world))
    per_rank = -(-total // world)
    num_batches = -(-per_rank // mb)
    out: list[tuple[list[int], float]] = []
    for b in range(num_batches):
        chunk = mine[b * mb : (b + 1) * mb]
        out.append((chunk, 1.0) if chunk else ([0], 0.0))
    return out
