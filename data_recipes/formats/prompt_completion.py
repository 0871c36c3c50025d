"""TRL's prompt-completion rows: ``{"prompt": …, "completion": …}``, conversational or plain.

* conversational: ``prompt`` is a list of messages (system / user / earlier turns) and
  ``completion`` the list of messages to train (assistant turns, with tool calls and tool results
  between them); the two lists are one conversation, and the trained reply is the completion
  (every assistant turn after the last user message, the ``history: last`` rule);
* plain: ``prompt`` and ``completion`` are strings. Our template renders chats only, so the pair
  becomes one user turn and one assistant turn (the completion's surrounding whitespace stripped like
  every assistant body), which is how the model is prompted at inference. TRL's own trainer would
  instead train the completion as a raw continuation of the prompt, without a template.

A ``tools`` column is read as in the OpenAI format. Rows with a ``label`` (TRL's unpaired preference,
KTO) are preference data and are refused by :mod:`data_recipes.formats.detect` unless this format is
named explicitly.
"""

from __future__ import annotations

from typing import Any

from data_recipes.formats.openai import read_tools
from data_recipes.messages import SampleError

COLUMNS = ("prompt", "completion", "tools", "functions")


def _part(value: Any, role: str, column: str, origin: str) -> list[Any]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        return value
    kind = "an empty list" if isinstance(value, list) else type(value).__name__
    raise SampleError(
        "empty_conversation", f"'{column}' is {kind}; expected a string or a list of messages", origin
    )


def read(row: dict[str, Any], origin: str = "") -> tuple[list[Any], list[Any]]:
    """A prompt-completion row as one list of OpenAI messages, and its tools."""
    if "prompt" not in row or "completion" not in row:
        raise SampleError("no_messages", "format 'prompt_completion' needs 'prompt' and 'completion'", origin)
    prompt = _part(row["prompt"], "user", "prompt", origin)
    completion = _part(row["completion"], "assistant", "completion", origin)
    roles = {m.get("role") for m in completion if isinstance(m, dict)}
    if "user" in roles or "system" in roles:
        raise SampleError(
            "bad_message", "'completion' holds a user or system message; only replies can be trained", origin
        )
    return prompt + completion, read_tools(row, origin)
