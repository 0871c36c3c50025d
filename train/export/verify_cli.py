"""``hermes-sft verify DIR [--reference RUN_OR_DIR]``: load, logits, template parity, generation."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="an exported folder (BF16, FP8 or LoRA adapter)")
    parser.add_argument(
        "--reference",
        metavar="RUN_OR_DIR",
        help="what the folder must match: a run dir, checkpoint, or model folder (e.g. the BF16 "
        "export for an FP8 folder)",
    )
    parser.add_argument("--base-model", metavar="DIR", help="LoRA adapters: the base model folder")
    parser.add_argument(
        "--min-top1", type=float, default=0.99, help="FP8: minimum top-1 agreement (default 0.99)"
    )
    parser.add_argument(
        "--max-rel-err", type=float, default=0.05, help="FP8: maximum relative logits error (default 0.05)"
    )
    parser.add_argument(
        "--min-margin",
        type=float,
        default=0.1,
        help="judge top-1 agreement only where the reference's top-2 logit margin is at least this "
        "(near-ties flip under any rounding; 0 judges every position)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generation check length (default 16)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from train.export.verify import verify_folder

    report = verify_folder(
        args.folder,
        reference=args.reference,
        base_model=args.base_model,
        max_new_tokens=args.max_new_tokens,
        min_top1=args.min_top1,
        max_rel_err=args.max_rel_err,
        min_margin=args.min_margin,
        progress=True,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.table())
    return 0 if report.ok else 1
