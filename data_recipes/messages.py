"""Conversation types and the OpenAI-messages normalizer.

Every raw row becomes a :class:`Conversation` of :class:`Message` s here; nothing downstream reads
raw dicts. Normalization is deliberate and documented:

* reasoning comes from ``reasoning_content`` / ``reasoning`` / ``thinking`` or from a reasoning block
  that opens ``content``: ``<think>…</think>``, or one of the other published marker pairs
  (:data:`REASONING_MARKERS`: OpenThoughts / Bespoke-Stratos ``<|begin_of_thought|>…<|end_of_thought|>``,
  ``<reasoning>…</reasoning>``, ``<thinking>…</thinking>``), with the answer after it optionally wrapped
  in ``<|begin_of_solution|>…<|end_of_solution|>``, ``<answer>…</answer>`` or ``<output>…</output>``;
  it is stored without tags;
* assistant content and reasoning are stripped of surrounding whitespace (a leading newline would
  merge with the header's newline into one token and blur the trained span);
* tool-call ``arguments`` are parsed into a dict (a JSON string and a dict render identically); the
  legacy OpenAI ``function_call`` field and ``function`` role read as a tool call and a tool result;
* content given as a list of OpenAI text parts (``{"type": "text", "text": …}``, or ``"value"`` as some
  exporters write it) is joined; any other non-string content is an error naming the part;
* a system message with empty content is no system message at all (OpenHermes-2.5 has many), so the
  template writes its default prompt, as at inference for a conversation without one.

Bad input raises :class:`SampleError` with a stable ``reason`` key (counted by the data builder).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from data_recipes.tag_placement import misplaced_tag

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
# Reasoning blocks other than <think> that published SFT sets open an assistant turn with:
# Sky-T1 / Bespoke-Stratos / OpenThoughts, GRPO-style (TRL and Unsloth examples), Reflection-style.
REASONING_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
    ("<reasoning>", "</reasoning>"),
    ("<thinking>", "</thinking>"),
)
# Wrappers around the answer after the reasoning (OpenThoughts, DeepSeek-R1-Zero / GRPO, Reflection).
ANSWER_MARKERS: tuple[tuple[str, str], ...] = (
    ("<|begin_of_solution|>", "<|end_of_solution|>"),
    ("<answer>", "</answer>"),
    ("<output>", "</output>"),
)
# Markers that are never ordinary text: anywhere but in their place they are an error.
STRICT_MARKERS = (
    "<|begin_of_thought|>",
    "<|end_of_thought|>",
    "<|begin_of_solution|>",
    "<|end_of_solution|>",
)

CONTROL_TOKEN_RE = re.compile(
    r"<\|(?:begin_of_text|end_of_text|start_header_id|end_header_id|eot_id|eom_id|python_tag"
    r"|finetune_right_pad_id|reserved_special_token_\d+)\|>"
)


class SampleError(ValueError):
    """A sample that cannot be rendered. ``reason`` is a stable key used for drop counts."""

    def __init__(self, reason: str, detail: str, origin: str = "") -> None:
        self.reason, self.detail, self.origin = reason, detail, origin
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}{reason}: {detail}")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str | None = None

    def as_json(self) -> str:
        """The call as written inside ``<tool_call>`` (same serialization as the template's tojson)."""
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] = ()
    origin: str = ""  # "file:line" or similar, used in every error message
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def load_json(text: str, reason: str, what: str, origin: str) -> Any:
    """``json.loads`` that reports bad JSON as a :class:`SampleError` with ``reason``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SampleError(reason, f"{what} is not valid JSON ({err.msg})", origin) from err


def _part_text(part: Any, what: str, origin: str) -> str:
    """One OpenAI content part: text under ``text`` (the API's key) or ``value`` (some exporters')."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        raise SampleError("non_string_content", f"{what} has a {type(part).__name__} part", origin)
    kind = part.get("type", "text")
    if kind != "text":
        raise SampleError(
            "non_string_content", f"{what} has a {kind!r} part (only text parts can be rendered)", origin
        )
    text = part.get("text", part.get("value"))
    if not isinstance(text, str):
        raise SampleError("non_string_content", f"{what} has a text part without a 'text' string", origin)
    return text


def _text(value: Any, what: str, origin: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_part_text(p, what, origin) for p in value)
    raise SampleError("non_string_content", f"{what} is {type(value).__name__}, expected a string", origin)


def parse_arguments(raw: Any, origin: str = "") -> dict[str, Any]:
    """Tool-call arguments as a dict, from a dict or a JSON string holding an object."""
    if isinstance(raw, str):
        raw = load_json(raw, "bad_tool_arguments", "arguments", origin) if raw.strip() else {}
    if not isinstance(raw, dict):
        raise SampleError(
            "bad_tool_arguments", f"arguments must be a JSON object, got {type(raw).__name__}", origin
        )
    return raw


def _split_think(content: str, origin: str) -> tuple[str | None, str]:
    opens, closes = content.count("<think>"), content.count("</think>")
    if opens == 0 and closes == 0:
        return None, content
    if opens != 1 or closes != 1:
        raise SampleError("bad_think_tags", f"{opens} <think> and {closes} </think> tags in one turn", origin)
    stripped = content.lstrip()
    if not stripped.startswith("<think>"):
        raise SampleError("bad_think_tags", "<think> must open the assistant turn", origin)
    reasoning, answer = stripped[len("<think>") :].split("</think>", 1)
    return reasoning, answer


def _split_markers(content: str, origin: str) -> tuple[str | None, str]:
    stripped = content.lstrip()
    for open_, close in REASONING_MARKERS:
        strict = open_ in STRICT_MARKERS
        opens, closes = content.count(open_), content.count(close)
        if not stripped.startswith(open_):
            if strict and opens + closes:
                raise SampleError("bad_reasoning_markers", f"{open_} must open the assistant turn", origin)
            continue
        if opens != 1 or closes != 1:
            raise SampleError(
                "bad_reasoning_markers", f"{opens} {open_} and {closes} {close} markers in one turn", origin
            )
        return tuple(stripped[len(open_) :].split(close, 1))  # type: ignore[return-value]
    return None, content


def _unwrap_answer(answer: str, origin: str) -> str:
    """The answer without a wrapper that encloses all of it (``<answer>…</answer>`` and kin)."""
    stripped = answer.strip()
    for open_, close in ANSWER_MARKERS:
        if stripped.startswith(open_) and stripped.endswith(close):
            inner = stripped[len(open_) : -len(close)]
            if open_ not in inner and close not in inner:
                return inner
    for marker in STRICT_MARKERS:
        if marker in answer:
            raise SampleError("bad_reasoning_markers", f"a stray {marker} in the answer", origin)
    return answer


def split_inline_reasoning(content: str, origin: str = "") -> tuple[str | None, str]:
    """Split a leading reasoning block off assistant content (``<think>`` or :data:`REASONING_MARKERS`).

    ``<think>`` tags anywhere must be one balanced pair opening the turn (``bad_think_tags``: the
    template itself reads them); the OpenThoughts markers likewise (``bad_reasoning_markers``); the
    XML-like pairs count only when they open the turn (elsewhere they may be ordinary text).
    """
    reasoning, answer = _split_think(content, origin)
    if reasoning is None:
        reasoning, answer = _split_markers(content, origin)
    if reasoning is None:
        strict = any(m in content for m in STRICT_MARKERS)
        return None, _unwrap_answer(content, origin) if strict else content
    return reasoning, _unwrap_answer(answer, origin)


def _tool_call(raw: Any, origin: str) -> ToolCall:
    if not isinstance(raw, dict):
        raise SampleError("bad_tool_call", f"tool call is {type(raw).__name__}, expected an object", origin)
    fn = raw.get("function", raw)
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise SampleError("bad_tool_call", "tool call has no function name", origin)
    args = fn.get("arguments", fn.get("parameters", {}))
    return ToolCall(name=name, arguments=parse_arguments(args, origin), id=raw.get("id"))


def _tool_schema(raw: Any, origin: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = load_json(raw, "bad_tools", "a tool definition", origin)
    if not isinstance(raw, dict):
        raise SampleError("bad_tools", "a tool definition must be an object", origin)
    fn = raw.get("function") if raw.get("type") == "function" else raw
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise SampleError("bad_tools", "a tool definition has no function name", origin)
    return {"type": "function", "function": fn}


def message_from_openai(raw: Any, origin: str = "") -> Message:
    """One OpenAI chat message as a :class:`Message`."""
    if not isinstance(raw, dict):
        raise SampleError("bad_message", f"message is {type(raw).__name__}, expected an object", origin)
    role = "tool" if raw.get("role") == "function" else raw.get("role")  # legacy OpenAI function result
    if role not in ROLES:
        raise SampleError("unknown_role", f"role {role!r} (expected one of {', '.join(ROLES)})", origin)
    content = _text(raw.get("content"), f"{role} content", origin)
    if raw.get("content") is None and role in ("user", "tool"):  # a drop, never an empty turn
        raise SampleError("missing_content", f"a {role} message without 'content'", origin)
    if role != "assistant":
        return Message(role=role, content=content, tool_call_id=raw.get("tool_call_id"), name=raw.get("name"))
    field_reasoning = next((raw[k] for k in REASONING_FIELDS if raw.get(k) is not None), None)
    inline_reasoning, content = split_inline_reasoning(content, origin)
    if field_reasoning is not None and inline_reasoning is not None:
        raise SampleError("bad_think_tags", "reasoning given both as a field and inline in content", origin)
    reasoning = (
        _text(field_reasoning, "reasoning", origin) if field_reasoning is not None else inline_reasoning
    )
    if reasoning is not None and ("<think>" in reasoning or "</think>" in reasoning):
        raise SampleError("bad_think_tags", "think tags inside the reasoning text", origin)
    reasoning = reasoning.strip() if reasoning is not None else None
    legacy = [raw["function_call"]] if raw.get("function_call") else []  # the pre-tools OpenAI field
    calls = tuple(_tool_call(c, origin) for c in (raw.get("tool_calls") or legacy))
    return Message(role="assistant", content=content.strip(), reasoning=reasoning or None, tool_calls=calls)


def conversation_from_openai(
    row: dict[str, Any], origin: str = "", meta: dict[str, Any] | None = None
) -> Conversation:
    """A row ``{"messages": [...], "tools": [...]}`` as a validated :class:`Conversation`.

    System messages with empty content are left out (no system message, not an empty one).
    """
    raw_messages = row.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise SampleError("empty_conversation", "no 'messages' list (or it is empty)", origin)
    tools = row.get("tools") or []
    if isinstance(tools, str):
        tools = load_json(tools, "bad_tools", "'tools'", origin) if tools.strip() else []
    if not isinstance(tools, list):
        raise SampleError("bad_tools", f"'tools' must be a list, got {type(tools).__name__}", origin)
    messages = (message_from_openai(m, origin) for m in raw_messages)
    conv = Conversation(
        messages=tuple(m for m in messages if m.role != "system" or m.content.strip()),
        tools=tuple(_tool_schema(t, origin) for t in tools),
        origin=origin,
        meta=dict(meta or {}),
    )
    validate(conv)
    return conv


def _check_strings(conv: Conversation) -> None:
    for i, m in enumerate(conv.messages):
        texts = [m.content, m.reasoning or ""] + [c.as_json() for c in m.tool_calls]
        for text in texts:
            if hit := CONTROL_TOKEN_RE.search(text):
                raise SampleError(
                    "control_token_in_content",
                    f"message {i} ({m.role}) contains the control token {hit.group(0)}",
                    conv.origin,
                )
    if conv.tools and (hit := CONTROL_TOKEN_RE.search(json.dumps(conv.tools, ensure_ascii=False))):
        raise SampleError(
            "control_token_in_content", f"tools contain the control token {hit.group(0)}", conv.origin
        )


def _check_tags(conv: Conversation) -> None:
    """Hermes tags only where the template writes them (``data_recipes/tag_placement.py``)."""
    pieces = []
    for i, m in enumerate(conv.messages):
        pieces.append((m.content, "text", f"message {i}, {m.role} content"))
        if m.reasoning:
            pieces.append((m.reasoning, "reasoning", f"message {i}, reasoning"))
        pieces += [(c.as_json(), "call", f"tool call {c.name!r} of message {i}") for c in m.tool_calls]
    if conv.tools:
        pieces.append((json.dumps(conv.tools, ensure_ascii=False), "tools", "the tool definitions"))
    for text, slot, where in pieces:
        if problem := misplaced_tag(text, slot, where):
            raise SampleError("tag_out_of_place", problem, conv.origin)


def validate(conv: Conversation) -> None:
    """Structural checks shared by every format and recipe. Raises :class:`SampleError`."""
    if not conv.messages:
        raise SampleError("empty_conversation", "no messages", conv.origin)
    if not any(m.role == "assistant" for m in conv.messages):
        raise SampleError("no_assistant_turn", "the conversation has no assistant turn", conv.origin)
    pending: list[ToolCall] = []  # calls of the latest assistant turn not yet answered
    for i, m in enumerate(conv.messages):
        if m.role == "assistant":
            if not (m.content or m.reasoning or m.tool_calls):
                raise SampleError(
                    "empty_assistant_turn", f"message {i} is an empty assistant turn", conv.origin
                )
            pending = list(m.tool_calls)
        elif m.role == "tool":
            if not pending:
                raise SampleError(
                    "orphan_tool_result", f"message {i} answers no pending tool call", conv.origin
                )
            match = pending[0]
            if m.tool_call_id and any(c.id for c in pending):
                match = next((c for c in pending if c.id == m.tool_call_id), None)
                if match is None:
                    raise SampleError(
                        "orphan_tool_result",
                        f"message {i} answers unknown call id {m.tool_call_id!r}",
                        conv.origin,
                    )
            pending.remove(match)
        else:
            pending = []
    _check_strings(conv)
    _check_tags(conv)


def to_template_messages(conv: Conversation) -> list[dict[str, Any]]:
    """Plain dicts in the shape the chat template reads (what ``apply_chat_template`` users pass)."""
    out: list[dict[str, Any]] = []
    for m in conv.messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.reasoning:
            d["reasoning_content"] = m.reasoning
        if m.tool_calls:
            d["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                | ({"id": c.id} if c.id else {})
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out
