"""Hermes function-calling rows (``NousResearch/hermes-function-calling-v1`` style).

ShareGPT turns (or OpenAI-shaped ``messages`` with ``role`` / ``content``, as some exports write
them) whose text carries the tool protocol as markup:

* ``system``: the tool signatures inside ``<tools>…</tools>`` (a JSON list, one JSON object per line,
  or a Python-literal list as in the public dataset). They become ``Conversation.tools``, which the
  template writes back in its own canonical tool prompt. Around that block the public rows mix two
  things: the old protocol description ("You are a function calling AI model", where the tools are,
  how to format a ``<tool_call>``, the pydantic call schema), which would contradict the template's
  own tool paragraph and is removed sentence by sentence; and the task instructions ("You are an expert structured information extraction AI
  model…"), which are kept as the system message. A system turn *without* a ``<tools>`` block is
  kept as is.
* ``gpt``: an optional leading ``<think>…</think>`` (reasoning), then text and ``<tool_call>``
  blocks holding ``{"name", "arguments"}`` (JSON, or a Python literal; a block written with literal
  ``\\n`` escapes instead of newlines around it is read the same). Calls written *inside* the
  reasoning are interleaved thinking: they stay in the reasoning text (the ``tool_use`` recipe checks
  them and the builder masks any ``<tool_response>`` inside a trained turn).
* ``tool``: one or more ``<tool_response>…</tool_response>`` blocks, one tool message each (the text
  as is when there is no tag).
"""

from __future__ import annotations

import re
from typing import Any

from data_recipes.formats.literals import loads_lenient, strip_block
from data_recipes.formats.openai import read_tools
from data_recipes.formats.protocol import drop_sentences
from data_recipes.formats.sharegpt import conversations_to_messages, plain_turn
from data_recipes.messages import SampleError

TOOLS_RE = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
RESPONSE_RE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
MARKERS = ("<tools>", "<tool_call>", "<tool_response>")
COLUMNS = ("conversations", "messages", "tools", "functions")
REMOVED = "\x00"  # stands for a removed <tools> / <tool_call> block while the system text is cut up
# A sentence of a system turn that describes the old tool protocol rather than the task.
PROTOCOL_RE = re.compile(
    r"\x00|</?tools>|</?tool_call>|</?tool_response>|function signature|values to plug into"
    r"|call one or more functions|pydantic model json schema|available (?:tools|functions)|XML tags"
    r"|function calling AI model",
    re.IGNORECASE,
)


def has_openai_markup(messages: Any) -> bool:
    """True for OpenAI-shaped ``messages`` that carry the Hermes protocol as text (a ``<tools>`` block
    in a system message, no structured ``tool_calls``): Hermes data exported as ``messages``."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return False
    if any(m.get("tool_calls") for m in messages):
        return False
    return any(m.get("role") == "system" and "<tools>" in str(m.get("content")) for m in messages)


def has_markup(turns: Any) -> bool:
    """True if any turn of a ShareGPT row uses the Hermes tool markup."""
    if isinstance(turns, str):
        return any(m in turns for m in MARKERS)
    return isinstance(turns, list) and any(
        isinstance(t, dict) and isinstance(t.get("value"), str) and any(m in t["value"] for m in MARKERS)
        for t in turns
    )


def parse_tools(block: str, origin: str) -> list[Any]:
    """The tool signatures inside one ``<tools>`` block: a list, one object, or one object per line."""
    block = strip_block(block)
    try:
        parsed = loads_lenient(block)
        return parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        pass
    tools = []
    for line in block.splitlines():
        if line.strip():
            try:
                tools.append(loads_lenient(line.strip()))
            except ValueError as err:
                raise SampleError("bad_tools", f"cannot parse the <tools> block: {err}", origin) from err
    return tools


def system_text(value: str) -> str:
    """A Hermes system turn without its tool protocol: the ``<tools>`` block, the ``<tool_call>``
    example and every sentence describing them are removed; the task instructions stay."""
    return drop_sentences(CALL_RE.sub(REMOVED, TOOLS_RE.sub(REMOVED, value)), PROTOCOL_RE)


def _system(value: str, origin: str) -> tuple[list[dict[str, Any]], list[Any]]:
    blocks = [b for b in TOOLS_RE.findall(value) if strip_block(b)]
    if not blocks:
        return [{"role": "system", "content": value}], []
    tools = [tool for block in blocks for tool in parse_tools(block, origin)]
    text = system_text(value)
    return ([{"role": "system", "content": text}] if text else []), tools


def _call(text: str, origin: str) -> dict[str, Any]:
    try:
        call = loads_lenient(text.strip())
    except ValueError as err:
        raise SampleError("bad_tool_call", f"a <tool_call> block is not an object: {err}", origin) from err
    if not isinstance(call, dict):
        raise SampleError("bad_tool_call", f"a <tool_call> block holds {type(call).__name__}", origin)
    return {"type": "function", "function": call}


def split_reasoning(value: str, origin: str) -> tuple[str | None, str]:
    """Leading ``<think>…</think>`` (kept verbatim, interleaved calls included) and the rest."""
    stripped = value.lstrip()
    if not stripped.startswith("<think>") or "</think>" not in stripped:
        return None, value
    reasoning, rest = stripped[len("<think>") :].split("</think>", 1)
    return reasoning, rest


def _assistant(value: str, origin: str) -> list[dict[str, Any]]:
    reasoning, rest = split_reasoning(value, origin)
    if rest.count("<tool_call>") != rest.count("</tool_call>"):
        raise SampleError("bad_tool_call", "unbalanced <tool_call> tags in an assistant turn", origin)
    calls = [_call(c, origin) for c in CALL_RE.findall(rest)]
    content = CALL_RE.sub("\n", rest).strip()
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return [msg]


def _tool(value: str, origin: str) -> list[dict[str, Any]]:
    if value.count("<tool_response>") != value.count("</tool_response>"):
        raise SampleError("bad_tool_response", "unbalanced <tool_response> tags in a tool turn", origin)
    blocks = RESPONSE_RE.findall(value)
    return [{"role": "tool", "content": strip_block(b)} for b in blocks] or [
        {"role": "tool", "content": value}
    ]


def read(row: dict[str, Any], origin: str = "") -> tuple[list[dict[str, Any]], list[Any]]:
    """A Hermes function-calling row's turns as OpenAI messages, and its tools (column + ``<tools>``)."""
    turns = row["conversations"] if "conversations" in row else row.get("messages")
    if turns is None:
        raise SampleError("no_messages", "format 'hermes_fc' needs a 'conversations' list", origin)
    tools: list[Any] = []

    def parse_turn(role: str, value: str, origin: str) -> list[dict[str, Any]]:
        if role == "system":
            messages, found = _system(value, origin)
            tools.extend(found)
            return messages
        if role == "assistant":
            return _assistant(value, origin)
        if role == "tool":
            return _tool(value, origin)
        return plain_turn(role, value, origin)

    messages = conversations_to_messages(turns, origin, parse_turn)
    return messages, read_tools(row, origin) + tools
