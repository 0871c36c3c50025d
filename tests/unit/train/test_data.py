"""The trainer's view of the packed dataset: checks, resumable order, flattened micro-batches."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, DatasetDict

from data_recipes.render import IGNORE_INDEX
from data_recipes.tokenizer import template_fingerprint, tokenizer_fingerprint
from train.config import BatchConfig, batch_layout
from train.data import (
    DataStream,
    check_manifest,
    collate,
    eval_slices,
    load_splits,
    rank_slices,
    read_manifest,
)

X = IGNORE_INDEX


def rows_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict(
        {k: [r[k] for r in rows] for k in ("input_ids", "labels", "position_ids", "seq_lengths")}
    )


def packed_row(samples: list[tuple[list[int], list[int]]]) -> dict:
    row = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
    for ids, labels in samples:
        row["input_ids"] += ids
        row["labels"] += labels
        row["position_ids"] += list(range(len(ids)))
        row["seq_lengths"].append(len(ids))
    return row


def test_collate_flattens_rows_and_shifts_labels_inside_each_row():
    # row 0: two samples (a: 3 tokens, b1 trained), row 1: one sample
    r0 = packed_row([([10, 11, 12], [X, 11, 12]), ([20, 21], [X, 21])])
    r1 = packed_row([([30, 31, 32], [X, X, 32])])
    mb = collate(rows_dataset([r0, r1]), [0, 1], vocab_size=100)
    assert mb.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 31, 32]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    # position i predicts the label of i + 1 within its row; the last token of a row predicts nothing
    assert mb.target_index.tolist() == [0, 1, 3, 6]
    assert mb.targets.tolist() == [11, 12, 21, 32]
    assert (mb.num_tokens, mb.num_trained, mb.seq_lengths, mb.row_ids) == (8, 4, [3, 2, 3], [0, 1])


def test_collate_rejects_broken_rows():
    good = packed_row([([1, 2, 3], [X, 2, 3])])
    bad_pos = dict(good, position_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="dataset row 1: position_ids must start at 0"):
        collate(rows_dataset([good, bad_pos]), [0, 1], vocab_size=100)
    short = dict(good, labels=[X, 2])
    with pytest.raises(
        ValueError, match="dataset row 0: input_ids/labels/position_ids/seq_lengths lengths disagree"
    ):
        collate(rows_dataset([short]), [0], vocab_size=100)
    with pytest.raises(ValueError, match="outside the model vocabulary"):
        collate(rows_dataset([good]), [0], vocab_size=3)


def test_stream_is_deterministic_wraps_epochs_and_ignores_world_size():
    s = DataStream(10, seed=3, shuffle=True)
    first = s.rows(0, 10)
    assert sorted(first) == list(range(10))  # one epoch is a permutation
    assert s.rows(10, 10) != first and sorted(s.rows(10, 10)) == list(range(10))  # epoch 2 reshuffled
    assert s.rows(7, 6) == first[7:] + s.rows(10, 3)  # a batch may straddle the epoch boundary
    assert DataStream(10, seed=3, shuffle=True).rows(4, 4) == first[4:8]  # resume: only the position matters
    assert DataStream(10, seed=3, shuffle=False).rows(0, 4) == [0, 1, 2, 3]


def test_rank_slices_and_eval_slices():
    layout = batch_layout(BatchConfig(global_batch_size=8, micro_batch_size=2), 2)
    rows = list(range(100, 108))
    assert rank_slices(rows, layout, 0) == [[100, 101], [102, 103]]
    assert rank_slices(rows, layout, 1) == [[104, 105], [106, 107]]
    ev0, ev1 = (eval_slices(5, layout, r, None) for r in (0, 1))
    assert len(ev0) == len(ev1)  # the same number of forwards on every rank (ZeRO-3 collectives)
    assert ev0 == [([0, 2], 1.0), ([4], 1.0)] and ev1 == [([1, 3], 1.0), ([0], 0.0)]
    assert eval_slices(5, layout, 0, max_rows=2) == [([0], 1.0)]


def test_manifest_from_another_tokenizer_or_template_is_refused(tokenizer, tmp_path):
    ours = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "template_fingerprint": template_fingerprint(),
        "max_seq_len": 512,
    }
    check_manifest(ours, tokenizer, "D", 512)
    with pytest.raises(ValueError, match="built with tokenizer fingerprint 'abc' but this run uses"):
        check_manifest(ours | {"tokenizer_fingerprint": "abc"}, tokenizer, "D", 512)
    with pytest.raises(ValueError, match="template fingerprint"):
        check_manifest(ours | {"template_fingerprint": "abc"}, tokenizer, "D", 512)
    with pytest.raises(ValueError, match=r"rows are up to 512 tokens but data\.max_seq_len=256"):
        check_manifest(ours, tokenizer, "D", 256)
    with pytest.raises(ValueError, match=r"no manifest\.json; build the dataset with `hermes-sft data build"):
        read_manifest(tmp_path)


def test_load_splits_checks_columns_and_splits(tmp_path):
    row = packed_row([([1, 2], [X, 2])])
    DatasetDict({"train": rows_dataset([row]), "validation": rows_dataset([row])}).save_to_disk(
        str(tmp_path / "ok")
    )
    train, evals = load_splits(tmp_path / "ok", "train", "validation")
    assert len(train) == 1 and len(evals) == 1
    assert load_splits(tmp_path / "ok", "train", "nope")[1] is None
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_splits(tmp_path / "ok", "dev", None)
    DatasetDict({"train": Dataset.from_dict({"input_ids": [[1]]})}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"columns \['labels', 'position_ids', 'seq_lengths'\] missing"):
        load_splits(tmp_path / "bad", "train", None)
    (tmp_path / "ok" / "manifest.json").write_text(json.dumps({"max_seq_len": 4}))
    assert read_manifest(tmp_path / "ok")["max_seq_len"] == 4
    assert torch.is_tensor(collate(train, [0], 10).input_ids)
