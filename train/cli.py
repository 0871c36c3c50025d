"""``hermes-sft``: one entry point; each subcommand lives in its own module and is imported lazily
(so ``hermes-sft render`` does not pay for importing DeepSpeed).

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Any exception a command
raises ends as one line on stderr and exit 2 (input) or 1 (runtime) (:mod:`train.cli_errors`);
``--debug`` anywhere on the line, or ``HERMES_SFT_DEBUG=1``, prints the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from train.cli_errors import debug_requested, describe

# name -> (module, one-line help). Nested groups ("data build") use a space.
COMMANDS: dict[str, tuple[str, str]] = {
    "render": (
        "data_recipes.cli_render",
        "render rows of any format `data build` reads to ids + labels on stdout",
    ),
    "inspect": ("data_recipes.cli_inspect", "show a rendered sample with trained tokens highlighted"),
    "tokenizer": ("data_recipes.cli_tokenizer", "write the Hermes tokenizer + chat template to a folder"),
    "data build": ("data_recipes.cli_build", "build a packed, tokenized dataset from a mixture config"),
    "data stats": ("data_recipes.cli_stats", "print a built dataset's manifest as a table"),
    "data inspect": ("data_recipes.cli_data_inspect", "show a packed row with sample boundaries"),
    "train": ("train.cli_train", "train with DeepSpeed ZeRO-3 (one rank, or --nproc-per-node N)"),
    "plan": ("train.plan", "memory / time plan for a config on N nodes x G GPUs"),
    "export": ("train.export.cli:EXPORT", "export a checkpoint to BF16 / FP8 Hugging Face folders"),
    "verify": ("train.export.cli:VERIFY", "verify an exported folder (load, logits, template, parse)"),
    "demo": ("train.demo", "run the whole pipeline on the bundled sample data (CPU, minutes)"),
}


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="hermes-sft", description="Hermes-4-style SFT of Llama-3.1 models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    leaves: dict[str, argparse.ArgumentParser] = {}
    for name, (_, help_text) in COMMANDS.items():
        parts = name.split(" ")
        if len(parts) == 1:
            leaves[name] = sub.add_parser(name, help=help_text, description=help_text)
            continue
        group, leaf = parts
        if group not in groups:
            gp = sub.add_parser(group, help=f"{group} commands")
            groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND", required=True)
        leaves[name] = groups[group].add_parser(leaf, help=help_text, description=help_text)
    return parser, leaves


def _selected(argv: list[str]) -> str | None:
    for n in range(2, 0, -1):
        name = " ".join(argv[:n])
        if name in COMMANDS:
            return name
    return None


def _pop_launcher_local_rank(argv: list[str]) -> list[str]:
    """The ``deepspeed`` launcher puts ``--local_rank=N`` before the subcommand; keep it as LOCAL_RANK."""
    if argv and argv[0].startswith("--local_rank"):
        if "=" in argv[0]:
            value, rest = argv[0].split("=", 1)[1], argv[1:]
        else:
            value, rest = (argv[1] if len(argv) > 1 else ""), argv[2:]
        os.environ.setdefault("LOCAL_RANK", value)
        return rest
    return argv


def main(argv: list[str] | None = None) -> int:
    debug, argv = debug_requested(_pop_launcher_local_rank(list(sys.argv[1:] if argv is None else argv)))
    parser, leaves = _build_parser()
    name = _selected(argv)
    if name is None:
        parser.parse_args(argv or ["--help"])
        return 2
    try:
        module_name, _, attr = COMMANDS[name][0].partition(":")
        module = importlib.import_module(module_name)
        module = getattr(module, attr) if attr else module  # "module:ATTR" names a Command in that module
        leaf = leaves[name]
        module.add_arguments(leaf)
        # Options may follow positionals (`train CFG a=1 --nproc-per-node 2 b=2`).
        args = leaf.parse_intermixed_args(argv[len(name.split(" ")) :])
        return int(module.run(args) or 0)
    except SystemExit:
        raise
    except BaseException as err:  # the one error boundary: one clear message, exit 2 (input) or 1 (runtime)
        if debug:
            traceback.print_exc()
        code, message = describe(err)
        print(f"hermes-sft {name}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
