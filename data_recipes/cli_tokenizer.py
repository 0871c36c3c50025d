"""``hermes-sft tokenizer --out DIR``: write the Hermes tokenizer with the chat template.

Writes ``tokenizer.json``, ``tokenizer_config.json`` (with ``chat_template``) and ``chat_template.jinja``.
A non-empty ``--out`` is refused unless ``--overwrite`` and an earlier ``hermes-sft tokenizer`` wrote it
(:mod:`data_recipes.outdir`).
"""

from __future__ import annotations

import argparse

from data_recipes.outdir import owned_output
from data_recipes.tokenizer import HERMES_TAGS, load_tokenizer, tokenizer_fingerprint, write_tokenizer_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if an earlier `hermes-sft tokenizer` wrote it (never a folder holding other files)",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="a local Llama-3.1 tokenizer folder/file to start from (default: built offline)",
    )


def run(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.base)
    inputs = [args.base] if args.base else []
    with owned_output(args.out, "tokenizer", args.overwrite, inputs) as staging:
        write_tokenizer_files(tokenizer, staging)
    tags = ", ".join(f"{tag}={i}" for tag, i in HERMES_TAGS.items())
    print(f"wrote {args.out} (vocab {len(tokenizer)}, fingerprint {tokenizer_fingerprint(tokenizer)})")
    print(f"hermes tags: {tags}")
    return 0
