"""``hermes-sft tokenizer --out DIR``: write the Hermes tokenizer with the chat template.

Writes ``tokenizer.json``, ``tokenizer_config.json`` (with ``chat_template``) and ``chat_template.jinja``.
"""

from __future__ import annotations

import argparse

from data_recipes.tokenizer import HERMES_TAGS, load_tokenizer, save_tokenizer, tokenizer_fingerprint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    parser.add_argument(
        "--base",
        default=None,
        help="a local Llama-3.1 tokenizer folder/file to start from (default: built offline)",
    )


def run(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.base)
    out = save_tokenizer(tokenizer, args.out)
    tags = ", ".join(f"{tag}={i}" for tag, i in HERMES_TAGS.items())
    print(f"wrote {out} (vocab {len(tokenizer)}, fingerprint {tokenizer_fingerprint(tokenizer)})")
    print(f"hermes tags: {tags}")
    return 0
