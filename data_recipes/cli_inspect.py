"""``hermes-sft inspect [INPUT]``: render a row and show which tokens are trained.

INPUT is read as ``data build`` reads it (any file type, format detected per row or ``--format``).
Without INPUT it shows the bundled showcase conversations (plain, reasoning, tools, multi-turn).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_recipes.cli_render import add_render_arguments, render_file, render_options
from data_recipes.highlight import highlight_tokens, legend, use_color
from data_recipes.messages import SampleError
from data_recipes.tokenizer import load_tokenizer

SHOWCASE = Path(__file__).with_name("samples") / "showcase.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        nargs="?",
        default=str(SHOWCASE),
        help="rows in any format `data build` reads (default: the bundled showcase)",
    )
    parser.add_argument("--index", type=int, default=None, help="only the row at this 0-based index")
    add_render_arguments(parser)
    color = parser.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_true", default=None, help="force ANSI colour")
    color.add_argument("--no-color", dest="color", action="store_false", help="plain markers ⟦trained⟧")


def run(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.tokenizer)
    color = use_color() if args.color is None else args.color
    print(legend(color))
    rows = render_file(args.input, tokenizer, render_options(args), args.format)
    for index, (origin, result) in enumerate(rows):
        if args.index is not None and index != args.index:
            continue
        print(f"\n── {origin} " + "─" * 40)
        if isinstance(result, SampleError):
            print(f"not renderable: {result.reason}: {result.detail}")
            continue
        for sample in result:
            trained = sample.num_trained
            print(f"[{len(sample.input_ids)} tokens, {trained} trained] {sample.origin}")
            print(highlight_tokens(tokenizer, sample.input_ids, sample.labels, color=color))
    return 0
