"""``hermes-sft render INPUT``: rows of any format ``data build`` reads → one JSON line per sample.

Rows are read exactly as the data builder reads them (same file types, the format detected per row by
:mod:`data_recipes.formats.detect`, or forced with ``--format``). Each output line is
``{"text": …, "input_ids": […], "labels": […], "origin": "file:line"}``. A bad row is reported on
stderr with its file, line and reason, and counted; ``--strict`` stops at the first. Columns no reader
used are counted in the summary line, as ``data build`` counts them in ``ignored_fields``.
Every sample gets the full checks (:func:`data_recipes.checks.check_invariants`, what the build's
audit runs on its share); a failure is reported like a bad row.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_recipes.checks import check_invariants
from data_recipes.formats.detect import FORMAT_NAMES, read_row
from data_recipes.messages import Conversation, SampleError
from data_recipes.pipeline import parse_row
from data_recipes.render import HISTORY_POLICIES, RenderedSample, RenderOptions, expand_history, render
from data_recipes.sources import iter_rows, resolve
from data_recipes.tokenizer import load_tokenizer


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        default="auto",
        help="row format (default: auto, detected per row as `data build` does)",
    )
    parser.add_argument(
        "--thinking",
        "--enable-thinking",
        dest="thinking",
        action="store_true",
        help="use the deep-thinking system prompt (the template's thinking / enable_thinking)",
    )
    parser.add_argument(
        "--history",
        choices=HISTORY_POLICIES,
        default=None,
        help="multi-turn policy: last (default) | expand | keep (see data_recipes/README.md)",
    )
    parser.add_argument(
        "--keep-cots",
        action="store_true",
        help="keep earlier turns' reasoning and train them (= --history keep)",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="a local Llama-3.1 tokenizer folder (default: built offline)"
    )


def render_options(args: argparse.Namespace) -> RenderOptions:
    history = args.history or ("keep" if args.keep_cots else "last")
    if args.keep_cots and history != "keep":
        raise ValueError(f"--keep-cots contradicts --history {history}; use one of them")
    return RenderOptions(thinking=args.thinking, history=history)


def read_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | SampleError]]:
    """(origin, row) for every row of a file the data builder reads (JSONL, JSON, Parquet, ``.gz``,
    a datasets folder); a malformed row yields a SampleError instead of a row."""
    for origin, text in iter_rows(resolve(str(path))):
        try:
            row = parse_row(text, origin)  # the builder's checks: JSON, UTF-8, encodable text
        except SampleError as err:
            yield origin, err
            continue
        if not isinstance(row, dict):  # the reason `data build` gives (formats.detect)
            yield (
                origin,
                SampleError("no_messages", f"row is {type(row).__name__}, expected a JSON object", origin),
            )
            continue
        yield origin, row


def render_file(
    path: str | Path, tokenizer, options: RenderOptions, fmt: str = "auto", ignored: Counter | None = None
) -> Iterator[tuple[str, list[RenderedSample] | SampleError]]:
    """Render every row of a file in any format ``data build`` reads; errors are yielded, not raised.

    ``ignored`` (if given) counts the columns no reader used, per column name."""
    for origin, row in read_rows(path):
        if isinstance(row, SampleError):
            yield origin, row
            continue
        try:
            read = read_row(row, fmt, origin)
            if ignored is not None:
                ignored.update(read.ignored)
            yield origin, render_checked(read.conversation, tokenizer, options)
        except SampleError as err:
            yield origin, err


def render_checked(conv: Conversation, tokenizer, options: RenderOptions) -> list[RenderedSample]:
    """``render_all`` + the full checks on every sample; raises :class:`SampleError`."""
    convs = expand_history(conv) if options.history == "expand" else [conv]
    samples = [render(c, tokenizer, options) for c in convs]
    for c, sample in zip(convs, samples, strict=True):
        check_invariants(sample, c, tokenizer, options)
    return samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        help="rows in any format `data build` reads (OpenAI, ShareGPT, Hermes FC, prompt/completion): "
        "JSONL, JSON, Parquet (.gz ok) or a datasets folder",
    )
    add_render_arguments(parser)
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first bad row instead of skipping it"
    )


def run(args: argparse.Namespace) -> int:
    options = render_options(args)
    tokenizer = load_tokenizer(args.tokenizer)
    rows, samples, dropped, ignored = 0, 0, Counter(), Counter()
    for _origin, result in render_file(args.input, tokenizer, options, args.format, ignored):
        rows += 1
        if isinstance(result, SampleError):
            if args.strict:
                raise result
            dropped[result.reason] += 1
            print(f"skipped {result}", file=sys.stderr)
            continue
        for s in result:
            samples += 1
            line = {"text": s.text, "input_ids": s.input_ids, "labels": s.labels, "origin": s.origin}
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items())) or "none"
    print(
        f"rendered {samples} samples from {rows} rows; dropped {sum(dropped.values())} ({summary})",
        file=sys.stderr,
    )
    if ignored:
        names = ", ".join(f"{name}: {n}" for name, n in sorted(ignored.items()))
        print(f"columns no reader used (rows): {names}", file=sys.stderr)
    return 0
