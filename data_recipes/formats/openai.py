"""OpenAI ``messages`` rows: the canonical format; the other formats are translated into it.

A row is ``{"messages": [...], "tools": [...]}``. ``tools`` (and ``messages``) may also be a JSON
string, which is how they are stored in Arrow so that rows with different tool schemas never get
null-padded into one struct type. Assistant messages may carry ``reasoning_content`` / ``reasoning``
/ ``thinking`` and ``tool_calls`` whose ``arguments`` is a dict or a JSON string; ``tool`` messages
carry ``tool_call_id`` / ``name``. The rules live in :func:`data_recipes.messages.conversation_from_openai`.
"""

from __future__ import annotations

from typing import Any

from data_recipes.messages import SampleError, load_json

COLUMNS = ("messages", "tools", "functions")


def maybe_json(value: Any, reason: str, what: str, origin: str) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return []
    return load_json(value, reason, what, origin)


def read_tools(row: dict[str, Any], origin: str) -> list[Any]:
    """The row's ``tools`` column (or the legacy OpenAI ``functions`` column): a list, one object, or
    either as a JSON string; absent → ``[]``."""
    key = "functions" if not row.get("tools") and row.get("functions") else "tools"
    tools = maybe_json(row.get(key), "bad_tools", f"'{key}'", origin) or []
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise SampleError("bad_tools", f"'tools' must be a list, got {type(tools).__name__}", origin)
    return tools


def read(row: dict[str, Any], origin: str = "") -> tuple[Any, list[Any]]:
    """An OpenAI-format row's messages (unvalidated) and tools."""
    if "messages" not in row:
        raise SampleError("no_messages", "format 'openai' needs a 'messages' list", origin)
    return maybe_json(row["messages"], "no_messages", "'messages'", origin), read_tools(row, origin)
