"""``hermes-sft data stats DIR``: a built dataset's manifest as tables (``--json`` for the raw file)."""

from __future__ import annotations

import argparse
import json
import sys

from data_recipes.manifest import read_manifest, tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="folder written by `hermes-sft data build`")
    parser.add_argument("--json", action="store_true", help="print manifest.json as is")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    manifest = read_manifest(args.dataset)
    if args.json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
        return 0
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    for table in tables(manifest):
        console.print(table)
    return 0
