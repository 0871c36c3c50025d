"""Top-level columns that any format may carry next to its conversation.

* ``system`` / ``system_prompt`` (Bespoke-Stratos-17k, OpenThoughts-114k, ToolACE, OpenHermes-2.5):
  the system message of the conversation. It becomes the first message unless the conversation has
  a non-empty system turn of its own; then that turn wins and the column is used only if it says the
  same (otherwise it is reported in the manifest's ``ignored_fields``, never silently dropped).
  An empty column is no system message.
* turn keys: a key of a turn that no reader uses (axolotl's per-turn ``weight``, a ``loss`` flag, …)
  is reported as ``COLUMN[].KEY`` in ``ignored_fields``, like an unused column.
* ``schema`` (Hermes json-mode rows): the JSON Schema of the expected answer, a JSON string or an
  object. It is kept in ``Conversation.meta["schema"]`` for the ``json_schema`` recipe, which prefers
  the schema the model actually sees in the prompt and falls back to this one.
"""

from __future__ import annotations

import json
from typing import Any

SYSTEM_COLUMNS = ("system", "system_prompt")
SCHEMA_COLUMN = "schema"
# The keys a turn of a conversation column may carry that some reader uses.
TURN_KEYS = frozenset(
    {"role", "content", "from", "value", "reasoning_content", "reasoning", "thinking", "tool_calls",
     "tool_call_id", "name", "type", "function_call"}
)  # fmt: skip
TURN_COLUMNS = ("messages", "conversations", "prompt", "completion")


def is_empty(value: Any) -> bool:
    """A column value that carries nothing (absent, null, blank text, empty list or mapping)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list | dict | tuple) and not value


def _system_turn(messages: list[Any]) -> str | None:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) and m.get("role") == "system" else None
        if isinstance(content, str) and content.strip():
            return content
    return None


def add_system_column(row: dict[str, Any], messages: list[Any]) -> tuple[list[Any], set[str]]:
    """``messages`` with the row's system column as the system turn, and the columns that were used."""
    if not isinstance(messages, list):
        return messages, set()  # the normalizer reports the malformed messages
    for key in SYSTEM_COLUMNS:
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        own = _system_turn(messages)
        if own is None:
            rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
            return [{"role": "system", "content": value}, *rest], {key}
        return messages, ({key} if own.strip() == value.strip() else set())
    return messages, set()


def schema_column(row: dict[str, Any]) -> tuple[dict[str, Any] | str | None, set[str]]:
    """The row's ``schema`` column (an object, or the text as given when it is not a JSON object), and
    ``{"schema"}`` when it is a JSON Schema object."""
    value = row.get(SCHEMA_COLUMN)
    if isinstance(value, dict) and value:
        return value, {SCHEMA_COLUMN}
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed, {SCHEMA_COLUMN}
        # Not a JSON object (a SQL schema, a Python literal): kept for the json_schema recipe, which
        # reads a Python literal or reports invalid_schema, but announced as unused otherwise.
        return value, set()
    return None, set()


def ignored_turn_keys(row: dict[str, Any], read_columns: tuple[str, ...]) -> list[str]:
    """``COLUMN[].KEY`` for every non-empty turn key no reader uses, in the turn columns the format read."""
    found: set[str] = set()
    for column in TURN_COLUMNS:
        turns = row.get(column) if column in read_columns else None
        if not isinstance(turns, list):
            continue
        for turn in turns:
            if isinstance(turn, dict):
                found.update(
                    f"{column}[].{k}" for k, v in turn.items() if k not in TURN_KEYS and not is_empty(v)
                )
    return sorted(found)
