"""Pick the format of a row and normalize it: the one entry point the builder, ``render`` and
``inspect`` call.

``auto`` decides per row, so a file may mix formats:

* ``chosen`` + ``rejected`` (UltraFeedback-binarized, TRL preference rows) → refused as
  ``preference_row``: a pair is not SFT data, even when it also has a ``messages`` column;
* ``prompt`` + ``completion`` + ``label`` (TRL unpaired preference, KTO) → refused the same way;
* ``messages`` → ``openai`` (``hermes_fc`` when its system message holds a ``<tools>`` block and no
  message has structured ``tool_calls``); ``conversations`` with a ToolACE ``system`` column (tools "in JSON
  format that you can invoke") → ``toolace``; ``conversations`` with Hermes tool markup →
  ``hermes_fc``; other ``conversations`` → ``sharegpt``; ``prompt`` + ``completion`` →
  ``prompt_completion`` (TRL); an instruction and a reply column (Alpaca, Dolly, OpenOrca) → ``alpaca``;
* anything else → ``no_messages``, naming what the row looks like (plain ``text``, prompt-only, …).

Naming a format skips detection, so ``format: openai`` deliberately trains an UltraFeedback row's
``messages`` (its pair columns are then reported as ignored). Top-level ``system`` /
``system_prompt`` / ``schema`` columns are read for every format (:mod:`.columns`). Every non-empty
column that no reader used is returned, for the manifest's ``ignored_fields``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from data_recipes.formats import alpaca, columns, hermes_fc, openai, prompt_completion, sharegpt, toolace
from data_recipes.messages import Conversation, SampleError, conversation_from_openai


@dataclass(frozen=True)
class Format:
    read: Callable[[dict[str, Any], str], tuple[Any, list[Any]]]
    """Row → (OpenAI messages, tools), unvalidated."""
    columns: tuple[str, ...]
    """The row keys ``read`` consumes."""


FORMATS: dict[str, Format] = {
    "openai": Format(openai.read, openai.COLUMNS),
    "sharegpt": Format(sharegpt.read, sharegpt.COLUMNS),
    "hermes_fc": Format(hermes_fc.read, hermes_fc.COLUMNS),
    "prompt_completion": Format(prompt_completion.read, prompt_completion.COLUMNS),
    "toolace": Format(toolace.read, toolace.COLUMNS),
    "alpaca": Format(alpaca.read, alpaca.COLUMNS),
}
FORMAT_NAMES: tuple[str, ...] = ("auto", *FORMATS)
PREFERENCE_HINT = (
    "SFT does not train on preference data; build it as pairs for DPO (`kind: preference` in the mixture), "
    "or, to train on one side, name the format (`format: openai` in the mixture, `--format openai` for "
    "render / inspect, reads its 'messages')"
)


@dataclass(frozen=True)
class ReadRow:
    """A normalized row: its format, conversation and the non-empty columns no reader used."""

    format: str
    conversation: Conversation
    ignored: tuple[str, ...]


def _no_format(row: dict[str, Any], origin: str) -> SampleError:
    keys = ", ".join(sorted(map(str, row))[:8]) or "none"
    if "text" in row:
        what = "a plain 'text' row (language-modeling data: no turns to train)"
    elif "prompt" in row:
        what = "a prompt-only row (no 'completion' to train)"
    else:
        what = (
            "a row with neither 'messages', 'conversations', 'prompt'/'completion' nor 'instruction'/'output'"
        )
    return SampleError("no_messages", f"{what} (keys: {keys})", origin)


def detect_format(row: Any, origin: str = "") -> str:
    """The format of one row; :class:`SampleError` if none fits or it is preference data."""
    if not isinstance(row, dict):
        raise SampleError("no_messages", f"row is {type(row).__name__}, expected a JSON object", origin)
    if "chosen" in row and "rejected" in row:
        raise SampleError(
            "preference_row",
            f"a preference pair ('chosen'/'rejected' columns, as in UltraFeedback-binarized); {PREFERENCE_HINT}",
            origin,
        )
    if "prompt" in row and "completion" in row and "label" in row:
        raise SampleError(
            "preference_row",
            f"an unpaired preference row ('prompt'/'completion'/'label', TRL's KTO format); {PREFERENCE_HINT}",
            origin,
        )
    if "messages" in row:
        return "hermes_fc" if hermes_fc.has_openai_markup(row["messages"]) else "openai"
    if "conversations" in row:
        if toolace.is_toolace(row):
            return "toolace"
        return "hermes_fc" if hermes_fc.has_markup(row["conversations"]) else "sharegpt"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if alpaca.matches(row):
        return "alpaca"
    raise _no_format(row, origin)


def read_row(row: Any, fmt: str = "auto", origin: str = "") -> ReadRow:
    """The row's format (detected if ``fmt`` is ``auto``), its :class:`Conversation` and ignored columns."""
    if fmt == "auto":
        fmt = detect_format(row, origin)
    elif not isinstance(row, dict):
        raise SampleError("no_messages", f"row is {type(row).__name__}, expected a JSON object", origin)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMAT_NAMES}")
    reader = FORMATS[fmt]
    messages, tools = reader.read(row, origin)
    used_system: set[str] = set()
    if not set(columns.SYSTEM_COLUMNS) & set(reader.columns):  # unless the format reads it itself
        messages, used_system = columns.add_system_column(row, messages)
    schema, used_schema = columns.schema_column(row)
    meta = {"schema": schema} if schema is not None else {}
    conv = conversation_from_openai({"messages": messages, "tools": tools}, origin, meta)
    used = {*reader.columns, *used_system, *used_schema}
    ignored = [str(k) for k, v in row.items() if k not in used and not columns.is_empty(v)]
    return ReadRow(fmt, conv, tuple(sorted(ignored + columns.ignored_turn_keys(row, reader.columns))))


def to_conversation(row: Any, fmt: str = "auto", origin: str = "") -> tuple[str, Conversation]:
    """The row's format (detected if ``fmt`` is ``auto``) and its :class:`Conversation`."""
    read = read_row(row, fmt, origin)
    return read.format, read.conversation
