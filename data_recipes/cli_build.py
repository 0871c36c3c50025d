"""``hermes-sft data build CONFIG.yaml --out DIR``: raw files → packed, tokenized dataset + manifest."""

from __future__ import annotations

import argparse
import os
import sys

from data_recipes.build import build, default_num_proc
from data_recipes.manifest import tables
from data_recipes.mixture import load_mixture


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="mixture config YAML (see configs/data/sample.yaml)")
    parser.add_argument("--out", required=True, help="output folder (a datasets DatasetDict + manifest.json)")
    parser.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="worker processes (default: the CPUs this process may use: affinity, SLURM_CPUS_PER_TASK)",
    )
    parser.add_argument("--strict", action="store_true", help="fail instead of dropping any sample")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if an earlier `data build` wrote it (never a folder holding other files)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. max_seq_len=8192 seed=1")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    cfg = load_mixture(args.config, args.overrides)
    num_proc = default_num_proc() if args.num_proc is None else args.num_proc
    if num_proc < 1:
        raise ValueError(f"--num-proc must be at least 1, got {num_proc}")
    if num_proc > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked; one thread each
    result = build(cfg, args.out, num_proc=num_proc, strict=args.strict, overwrite=args.overwrite,
                   progress=not args.quiet, inputs=[args.config])  # fmt: skip
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    for table in tables(result.manifest):
        console.print(table)
    console.print(
        f"wrote {result.out_dir} ({result.manifest['num_rows']:,} rows) and {result.out_dir}/manifest.json"
    )
    return 0
