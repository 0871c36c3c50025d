"""Hermes function-calling rows (``NousResearch/hermes-function-calling-v1`` style).

ShareGPT turns whose text carries the tool protocol as markup:

* ``system``: the tool signatures inside ``<tools>…</tools>`` (a JSON list, one JSON object per line,
  or a Python-literal list as in the public dataset). They become ``Conversation.tools``, which the
  template writes back in its own canonical tool prompt. The rest of that system text is the old
  protocol description (how to format calls), which would contradict the template's, so it is
  dropped; a system turn *without* a ``<tools>`` block is kept as is.
* ``gpt``: an optional leading ``<think>…</think>`` (reasoning), then text and ``<tool_call>``
  blocks holding ``{"name", "arguments"}`` (JSON, or a Python literal). Calls written *inside* the
  reasoning are interleaved thinking: they stay in the reasoning text (the ``tool_use`` recipe checks
  them and the builder masks any ``<tool_response>`` inside a trained turn).
* ``tool``: one or more ``<tool_response>…</tool_response>`` blocks, one tool message each (the text
  as is when there is no tag).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from data_recipes.formats.openai import maybe_json
from data_recipes.formats.openai import to_conversation as openai_to_conversation
from data_recipes.formats.sharegpt import conversations_to_messages, plain_turn
from data_recipes.messages import Conversation, SampleError

TOOLS_RE = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
RESPONSE_RE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
MARKERS = ("<tools>", "<tool_call>", "<tool_response>")


def has_markup(turns: Any) -> bool:
    """True if any turn of a ShareGPT row uses the Hermes tool markup."""
    if isinstance(turns, str):
        return any(m in turns for m in MARKERS)
    return isinstance(turns, list) and any(
        isinstance(t, dict) and isinstance(t.get("value"), str) and any(m in t["value"] for m in MARKERS)
        for t in turns
    )


def loads_lenient(text: str) -> Any:
    """JSON, or a Python literal (the public Hermes FC data writes dicts with single quotes)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise ValueError(f"neither JSON nor a Python literal ({type(err).__name__})") from err


def parse_tools(block: str, origin: str) -> list[Any]:
    """The tool signatures inside one ``<tools>`` block: a list, one object, or one object per line."""
    block = block.strip()
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


def _system(value: str, origin: str) -> tuple[list[dict[str, Any]], list[Any]]:
    blocks = [b for b in TOOLS_RE.findall(value) if b.strip()]
    if not blocks:
        return [{"role": "system", "content": value}], []
    return [], [tool for block in blocks for tool in parse_tools(block, origin)]


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
    return [{"role": "tool", "content": b.strip()} for b in blocks] or [{"role": "tool", "content": value}]


def to_conversation(row: dict[str, Any], origin: str = "") -> Conversation:
    """A Hermes function-calling row as a validated :class:`Conversation`."""
    if "conversations" not in row:
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

    messages = conversations_to_messages(row["conversations"], origin, parse_turn)
    row_tools = maybe_json(row.get("tools"), "bad_tools", "'tools'", origin) or []
    if not isinstance(row_tools, list):
        row_tools = [row_tools]
    return openai_to_conversation({"messages": messages, "tools": list(row_tools or []) + tools}, origin)
