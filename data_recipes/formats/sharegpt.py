"""ShareGPT rows: ``{"conversations": [{"from": ..., "value": ...}], "tools": ...}``.

Roles: ``system``, ``human`` (or ``user``), ``gpt`` (or ``assistant``), ``function_call`` (an
assistant turn whose value is a JSON call ``{"name", "arguments"}`` or a list of them, as in
LLaMA-Factory), ``observation`` / ``tool`` (a tool result). A ``gpt`` turn directly followed by a
``function_call`` turn is one assistant message (text, then the calls). A leading inline
``<think>…</think>`` in a ``gpt`` value becomes reasoning. Anything else is ``unknown_role``.

Rows are translated into OpenAI messages and validated by the same code as the OpenAI format, so all
three formats obey one set of rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from data_recipes.formats.literals import loads_lenient
from data_recipes.formats.openai import read_tools
from data_recipes.messages import SampleError, load_json

COLUMNS = ("conversations", "tools", "functions")

ROLE_MAP = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
}

# (value, origin) -> list of OpenAI messages for one turn; the hermes_fc format swaps these in.
TurnParser = Callable[[str, str], list[dict[str, Any]]]


def _value(turn: Any, i: int, origin: str) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise SampleError("bad_message", f"turn {i} is {type(turn).__name__}, expected an object", origin)
    role = turn.get("from", turn.get("role"))
    if role not in ROLE_MAP:
        raise SampleError(
            "unknown_role", f"turn {i} has role {role!r} (expected one of {sorted(ROLE_MAP)})", origin
        )
    value = turn.get("value", turn.get("content"))
    if value is None:
        if ROLE_MAP[role] in ("user", "tool"):  # a drop, never an empty turn
            raise SampleError("missing_content", f"turn {i} ({role}) has no 'value'", origin)
        value = ""
    if not isinstance(value, str):
        raise SampleError("non_string_content", f"turn {i} value is {type(value).__name__}", origin)
    return ROLE_MAP[role], value


def parse_function_call(value: str, origin: str) -> list[dict[str, Any]]:
    """A ``function_call`` value (one call or a list of them, JSON or a Python literal) as OpenAI
    ``tool_calls``."""
    try:
        calls = loads_lenient(value)
    except ValueError as err:
        raise SampleError("bad_tool_call", f"the function_call value is {err}", origin) from err
    calls = calls if isinstance(calls, list) else [calls]
    return [{"type": "function", "function": call} for call in calls]


def plain_turn(role: str, value: str, origin: str) -> list[dict[str, Any]]:
    if role == "function_call":
        return [{"role": "assistant", "content": "", "tool_calls": parse_function_call(value, origin)}]
    return [{"role": role, "content": value}]


def conversations_to_messages(
    turns: Any, origin: str, parse_turn: Callable[[str, str, str], list[dict[str, Any]]] = plain_turn
) -> list[dict[str, Any]]:
    """ShareGPT turns as OpenAI messages (a gpt turn + following function_call turn merged)."""
    if isinstance(turns, str):
        turns = load_json(turns, "no_messages", "'conversations'", origin)
    if not isinstance(turns, list) or not turns:
        raise SampleError("empty_conversation", "no 'conversations' list (or it is empty)", origin)
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        role, value = _value(turn, i, origin)
        for msg in parse_turn(role, value, origin):
            prev = messages[-1] if messages else None
            if (
                role == "function_call"
                and prev is not None
                and prev["role"] == "assistant"
                and not prev.get("tool_calls")
            ):
                prev["tool_calls"] = msg["tool_calls"]
                continue
            messages.append(msg)
    return messages


def read(row: dict[str, Any], origin: str = "") -> tuple[list[dict[str, Any]], list[Any]]:
    """A ShareGPT row's turns as OpenAI messages, and its tools."""
    if "conversations" not in row:
        raise SampleError("no_messages", "format 'sharegpt' needs a 'conversations' list", origin)
    return conversations_to_messages(row["conversations"], origin), read_tools(row, origin)
