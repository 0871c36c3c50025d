"""Instruction / response column rows: Alpaca (tatsu-lab/alpaca, LLaMA-Factory's default ``alpaca``
format: ``instruction``, ``input``, ``output``, ``history``), Dolly (``instruction``, ``context``,
``response``) and OpenOrca (``question``, ``response``, with a ``system_prompt`` column).

The user turn is the instruction (``instruction`` / ``question`` / ``query``) followed by the input
(``input`` / ``context``) on a new line when there is one (the join LLaMA-Factory uses); the reply
(``output`` / ``response`` / ``answer``) is trained; ``history`` pairs are earlier turns (masked under
``history: last``). ``system`` / ``system_prompt`` are read by :mod:`data_recipes.formats.columns`.
"""

from __future__ import annotations

from typing import Any

from data_recipes.formats.openai import read_tools
from data_recipes.messages import SampleError

PROMPT_KEYS = ("instruction", "question", "query")
INPUT_KEYS = ("input", "context")
REPLY_KEYS = ("output", "response", "answer")
COLUMNS = (*PROMPT_KEYS, *INPUT_KEYS, *REPLY_KEYS, "history", "tools", "functions")


def matches(row: dict[str, Any]) -> bool:
    """A row with an instruction column and a reply column."""
    return any(k in row for k in PROMPT_KEYS) and any(k in row for k in REPLY_KEYS)


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((row[k] for k in keys if k in row), None)


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
    """An instruction / response row as OpenAI messages, and its tools."""
    instruction, extra, output = (_first(row, keys) for keys in (PROMPT_KEYS, INPUT_KEYS, REPLY_KEYS))
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise SampleError(
            "no_messages", "format 'alpaca' needs an instruction and an output column, both strings", origin
        )
    if extra is not None and not isinstance(extra, str):
        raise SampleError(
            "non_string_content", f"the input is {type(extra).__name__}, expected a string", origin
        )
    query = "\n".join(part for part in (instruction, extra) if part)
    turns = [{"role": "user", "content": query}, {"role": "assistant", "content": output}]
    return _history(row.get("history"), origin) + turns, read_tools(row, origin)
