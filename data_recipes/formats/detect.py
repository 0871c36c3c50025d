"""Pick the format of a row and normalize it: the one entry point the builder calls.

``auto`` decides per row, so a file may mix formats: ``messages`` → ``openai``; ``conversations``
with Hermes tool markup → ``hermes_fc``; other ``conversations`` → ``sharegpt``. A row with neither
key is dropped as ``no_messages``. Naming a format skips detection (and a row without that format's
key is ``no_messages`` too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from data_recipes.formats import hermes_fc, openai, sharegpt
from data_recipes.messages import Conversation, SampleError

FORMATS: dict[str, Callable[[dict[str, Any], str], Conversation]] = {
    "openai": openai.to_conversation,
    "sharegpt": sharegpt.to_conversation,
    "hermes_fc": hermes_fc.to_conversation,
}
FORMAT_NAMES: tuple[str, ...] = ("auto", *FORMATS)


def detect_format(row: Any, origin: str = "") -> str:
    """``openai``, ``sharegpt`` or ``hermes_fc`` for one row; :class:`SampleError` if none fits."""
    if not isinstance(row, dict):
        raise SampleError("no_messages", f"row is {type(row).__name__}, expected a JSON object", origin)
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "hermes_fc" if hermes_fc.has_markup(row["conversations"]) else "sharegpt"
    keys = ", ".join(sorted(map(str, row))[:8]) or "none"
    raise SampleError("no_messages", f"row has neither 'messages' nor 'conversations' (keys: {keys})", origin)


def to_conversation(row: Any, fmt: str = "auto", origin: str = "") -> tuple[str, Conversation]:
    """The row's format (detected if ``fmt`` is ``auto``) and its :class:`Conversation`."""
    if fmt == "auto":
        fmt = detect_format(row, origin)
    elif not isinstance(row, dict):
        raise SampleError("no_messages", f"row is {type(row).__name__}, expected a JSON object", origin)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMAT_NAMES}")
    return fmt, FORMATS[fmt](row, origin)
