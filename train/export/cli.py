"""``hermes-sft export RUN_OR_CHECKPOINT --out DIR --format bf16|fp8`` and ``hermes-sft verify DIR``.

Each command is a :class:`Command` (``add_arguments`` + ``run``), named in ``train/cli.py`` as
``train.export.cli:EXPORT`` / ``train.export.cli:VERIFY``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import NamedTuple

from train.export.export import FORMATS, export_checkpoint
from train.export.verify import verify_folder


class Command(NamedTuple):
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a run dir, a checkpoint step-N/, a DeepSpeed save dir, or a model folder (BF16 export, "
        "gathered 16-bit save, PEFT adapter)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="bf16", help="bf16 (default) or fp8 (FP8_DYNAMIC)"
    )
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="LoRA runs: merge the adapter into the base and write a full model (default: adapter only)",
    )
    parser.add_argument(
        "--base-model", metavar="DIR", help="LoRA: the base model folder, if not found automatically"
    )
    parser.add_argument(
        "--model-config",
        metavar="PATH",
        help="config.json (or model folder) for a raw DeepSpeed save without model_config.json",
    )
    parser.add_argument(
        "--fp8-ignore",
        action="append",
        default=[],
        metavar="NAME",
        help="FP8: also keep this module in BF16 (exact name or re:REGEX; repeatable); lm_head always is",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the verification that runs after the export"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_export(args: argparse.Namespace) -> int:
    result = export_checkpoint(
        args.source,
        args.out,
        args.format,
        merge_lora=args.merge_lora,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
        verify=not args.no_verify,
        base_model=args.base_model,
        model_config=args.model_config,
        fp8_ignore=args.fp8_ignore,
        progress=not args.quiet,
    )
    if result.verify is not None:
        print(result.verify.table(), file=sys.stderr)
    print(result.summary(), file=sys.stderr)
    if args.json:
        payload = {k: v for k, v in vars(result).items() if k != "verify"}
        payload["out_dir"] = str(result.out_dir)
        payload["verify"] = result.verify.to_dict() if result.verify else None
        print(json.dumps(payload, indent=2))
    return 0 if result.ok else 1


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
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


def run_verify(args: argparse.Namespace) -> int:
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


EXPORT = Command(add_export_arguments, run_export)
VERIFY = Command(add_verify_arguments, run_verify)
