"""``hermes-sft data inspect DIR --row I``: one packed row, sample by sample, trained tokens marked.

Prints the row's samples (token range, length, trained tokens, whether positions restart at 0),
then the decoded row with ``║`` at each sample boundary and ``⟦…⟧`` (or colour) around trained tokens.
"""

from __future__ import annotations

import argparse

import numpy as np

from data_recipes.highlight import highlight_tokens, legend, use_color
from data_recipes.manifest import read_manifest
from data_recipes.tokenizer import load_tokenizer, tokenizer_fingerprint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="folder written by `hermes-sft data build`")
    parser.add_argument("--row", type=int, default=0, help="0-based row index (default 0)")
    parser.add_argument("--split", default="train", help="train or validation (default train)")
    parser.add_argument("--ids", action="store_true", help="also print the token ids and labels")
    color = parser.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_true", default=None, help="force ANSI colour")
    color.add_argument("--no-color", dest="color", action="store_false", help="plain markers ⟦trained⟧")


def describe_row(row: dict, pairs: bool = False) -> list[str]:
    """One line per sample (per pair side in a preference dataset): token range, length, trained tokens,
    position check."""
    lines, start = [], 0
    labels, positions = np.asarray(row["labels"]), np.asarray(row["position_ids"])
    for k, n in enumerate(row["seq_lengths"]):
        end = start + n
        ok = np.array_equal(positions[start:end], np.arange(n))
        trained = int((labels[start:end] != -100).sum())
        name = f"pair {k // 2} {('chosen', 'rejected')[k % 2]}" if pairs else f"sample {k}"
        lines.append(
            f"  {name}: tokens [{start}, {end}) len {n}, {trained} trained, positions {'ok' if ok else 'BAD'}"
        )
        start = end
    return lines


def run(args: argparse.Namespace) -> int:
    from datasets import load_from_disk

    manifest = read_manifest(args.dataset)
    data = load_from_disk(args.dataset)
    if args.split not in data:
        raise ValueError(f"{args.dataset}: no split {args.split!r} (has {sorted(data)})")
    split = data[args.split]
    if not 0 <= args.row < len(split):
        raise ValueError(
            f"--row {args.row}: the {args.split} split has {len(split)} rows (0..{len(split) - 1})"
        )
    tokenizer = load_tokenizer(manifest.get("tokenizer"))
    if tokenizer_fingerprint(tokenizer) != manifest["tokenizer_fingerprint"]:
        print("warning: this tokenizer differs from the one the dataset was built with; text may be wrong")
    row = split[args.row]
    color = use_color() if args.color is None else args.color
    n_tokens, n_trained = len(row["input_ids"]), sum(x != -100 for x in row["labels"])
    n_seqs, pairs = len(row["seq_lengths"]), manifest.get("kind") == "preference"
    what = f"{n_seqs // 2} pairs ({n_seqs} sequences)" if pairs else f"{n_seqs} samples"
    print(f"{args.split} row {args.row} of {len(split)}: {n_tokens} tokens "
          f"({n_tokens / manifest['max_seq_len']:.1%} of {manifest['max_seq_len']}), "
          f"{what}, {n_trained} trained tokens")  # fmt: skip
    print("\n".join(describe_row(row, pairs)))
    if args.ids:
        print("input_ids:", row["input_ids"])
        print("labels:   ", row["labels"])
    print(legend(color))
    boundaries = np.cumsum(row["seq_lengths"])[:-1].tolist()
    print(highlight_tokens(tokenizer, row["input_ids"], row["labels"], color=color, boundaries=boundaries))
    return 0
