"""Alpaca rows (tatsu-lab/alpaca, LLaMA-Factory's default ``alpaca`` format):
``{"instruction": …, "input": …, "output": …, "history": [[user, assistant], …], "system": …}``.

The user turn is the instruction followed by the input on a new line when there is one (the join
LLaMA-Factory uses); ``output`` is the trained reply; ``history`` pairs are earlier turns (masked under
``history: last``). ``system`` is read by :mod:`data_recipes.formats.columns` like for every format.
"""

from __future__ import annotations

from typing import Any

from data_recipes.formats.openai import read_tools
from data_recipes.messages import SampleError

COLUMNS = ("instruction", "input", "output", "history", "tools")


def _history(value: Any, origin: str) -> list[dict[str, Any]]:
    if value in (None, ""):
        return []
    if not isinstance(value, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in value
    ):
        raise SampleError("bad_message", "'history' must be a list of [user, assistant] string pairs", origin)
    return [
        {"role": role, "content": text}
        for pair in value
        for role, text in zip(("user", "assistant"), pair, strict=True)
    ]


def read(row: dict[str, Any], origin: str = "") -> tuple[list[dict[str, Any]], list[Any]]:
    """An Alpaca row as OpenAI messages, and its tools."""
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise SampleError("no_messages", "format 'alpaca' needs 'instruction' and 'output' strings", origin)
    if extra is not None and not isinstance(extra, str):
        raise SampleError(
            "non_string_content", f"'input' is {type(extra).__name__}, expected a string", origin
        )
    query = "\n".join(part for part in (instruction, extra) if part)
    turns = [{"role": "user", "content": query}, {"role": "assistant", "content": output}]
    return _history(row.get("history"), origin) + turns, read_tools(row, origin)
