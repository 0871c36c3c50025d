"""``hermes-sft export RUN_OR_CHECKPOINT --out DIR --format bf16|fp8``."""

from __future__ import annotations

import argparse
import json
import sys

FORMATS = ("bf16", "fp8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from train.export.export import export_checkpoint

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
