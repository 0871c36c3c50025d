"""Packing efficiency and time on a Hermes-like length mix: ours (global FFD) vs TRL vs naive greedy.

    python bench/pack_bench.py                      # 20k samples side by side + 5M lengths, ours only
    python bench/pack_bench.py --n 50000 --n-large 5000000

Lengths: 3.5 : 1.6 reasoning : non-reasoning (Hermes 4 §2), reasoning ≈ 5x longer (lognormal, median
4,000 vs 800 tokens), heavy tail clipped at 16,384. TRL packs token lists through
``trl.data_utils.pack_dataset(strategy="bfd")`` (best-fit decreasing inside each 1,000-row map batch,
its default); the naive packer is next-fit in dataset order (torchtune-style).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from data_recipes.packing import ffd_pack, next_fit_pack


def hermes_lengths(n: int, seq_len: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_reasoning = round(n * 3.5 / 5.1)
    reasoning = rng.lognormal(np.log(4000), 0.8, n_reasoning)
    plain = rng.lognormal(np.log(800), 1.0, n - n_reasoning)
    lengths = np.clip(np.concatenate([reasoning, plain]).astype(np.int64), 16, seq_len)
    rng.shuffle(lengths)
    return lengths


def trl_pack(lengths: np.ndarray, seq_len: int) -> tuple[int, float]:
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = pa.array(np.ones(int(offsets[-1]), dtype=np.int32))
    ids = pa.LargeListArray.from_arrays(pa.array(offsets), values).cast(pa.list_(pa.int32()))
    ds = Dataset(pa.table({"input_ids": ids}))
    t = time.perf_counter()
    packed = pack_dataset(ds, seq_len, strategy="bfd")
    elapsed = time.perf_counter() - t
    rows = len(packed)
    kept = sum(len(x) for x in packed.data.column("input_ids").to_pylist()) if rows < 50_000 else None
    assert kept is None or kept == lengths.sum(), "TRL bfd must not truncate these lengths"
    return rows, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="samples for the side-by-side run")
    parser.add_argument(
        "--n-large", type=int, default=5_000_000, help="lengths for the ours-only timing (0 = skip)"
    )
    parser.add_argument("--seq-len", type=int, default=16_384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    lengths = hermes_lengths(args.n, args.seq_len, args.seed)
    total = int(lengths.sum())
    print(
        f"{args.n:,} samples, {total:,} tokens, mean {lengths.mean():.0f}, max {lengths.max()}, rows of {args.seq_len}"
    )
    print("| packer | rows | efficiency | time (s) |\n|---|---:|---:|---:|")
    t = time.perf_counter()
    ours = ffd_pack(lengths, args.seq_len)
    print(
        f"| hermes-sft global FFD | {ours.num_rows:,} | {ours.efficiency:.4%} | {time.perf_counter() - t:.2f} |"
    )
    rows, elapsed = trl_pack(lengths, args.seq_len)
    print(
        f"| TRL pack_dataset bfd (per 1,000-row batch) | {rows:,} | {total / (rows * args.seq_len):.4%} | {elapsed:.2f} |"
    )
    t = time.perf_counter()
    naive = next_fit_pack(lengths, args.seq_len)
    print(
        f"| naive greedy (next-fit, dataset order) | {naive.num_rows:,} | {naive.efficiency:.4%} | {time.perf_counter() - t:.2f} |"
    )
    lower = -(-total // args.seq_len)
    print(f"| lower bound ceil(tokens / seq_len) | {lower:,} | {total / (lower * args.seq_len):.4%} | |")
    if args.n_large:
        big = hermes_lengths(args.n_large, args.seq_len, args.seed + 1)
        t = time.perf_counter()
        plan = ffd_pack(big, args.seq_len)
        elapsed = time.perf_counter() - t
        print(f"\nglobal FFD over {args.n_large:,} lengths ({int(big.sum()):,} tokens): "
              f"{plan.num_rows:,} rows, {plan.efficiency:.4%} efficiency, {elapsed:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
