"""ToolACE rows (``Team-ACE/ToolACE``): ShareGPT turns with a top-level ``system`` column that lists the
tools and a Python-call syntax for calling them.

* ``system``: "…Here is a list of functions in JSON format that you can invoke.\\n[{…}, …]. …". The
  JSON list becomes ``Conversation.tools`` (Python type names as ToolACE writes them, ``dict``,
  ``int``, ``float``, ``list``, become JSON Schema's ``object``, ``integer``, ``number``, ``array``); the sentences describing ToolACE's own call syntax ("you MUST put it in
  the format of [func_name1(params_name1=params_value1…)]", "NO other text MUST be included") are
  removed, since the template describes Hermes ``<tool_call>`` blocks; the task instructions stay.
* ``assistant``: a turn that is exactly ``[Name(arg=value, …), Other(…)]`` is a list of calls (names
  may contain spaces; values are Python or JSON literals); any other turn is text.
* ``tool``: a JSON list with one result per pending call becomes one tool message per call; anything
  else is one tool message.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from data_recipes.formats.protocol import drop_sentences
from data_recipes.formats.sharegpt import conversations_to_messages, plain_turn
from data_recipes.messages import SampleError

COLUMNS = ("conversations", "system")
TOOLS_INTRO = "in JSON format that you can invoke"
CALLS_RE = re.compile(r"^\s*\[\s*[^\[\]()=,\s][^\[\]()=,]*\(.*\)\s*\]\s*$", re.DOTALL)
PROTOCOL_RE = re.compile(
    r"in JSON format that you can invoke|in the format of|tools? call sections?|other text"
    r"|decide to return the function call",
    re.IGNORECASE,
)
JSON_NAMES = {"true": True, "false": False, "null": None}
# ToolACE writes Python type names where JSON Schema has its own (the template shows JSON Schema).
SCHEMA_TYPES = {"dict": "object", "int": "integer", "float": "number", "list": "array", "tuple": "array",
                "str": "string", "bool": "boolean"}  # fmt: skip


def _system_of(row: dict[str, Any]) -> str | None:
    system = row.get("system")
    return system if isinstance(system, str) else None


def is_toolace(row: dict[str, Any]) -> bool:
    """A ShareGPT row whose ``system`` column lists tools the ToolACE way."""
    system = _system_of(row)
    return system is not None and TOOLS_INTRO in system


def json_schema_types(schema: Any) -> Any:
    """``schema`` with ToolACE's Python type names (``dict``, ``int``, …) as JSON Schema's."""
    if isinstance(schema, dict):
        out = {k: json_schema_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = SCHEMA_TYPES.get(out["type"], out["type"])
        return out
    if isinstance(schema, list):
        return [json_schema_types(v) for v in schema]
    return schema


def parse_system(system: str, origin: str) -> tuple[str, list[dict[str, Any]]]:
    """The system text without the ToolACE protocol, and the tools it lists."""
    at = system.index(TOOLS_INTRO)
    start = system.find("[", at)
    try:
        tools, end = json.JSONDecoder().raw_decode(system, start) if start != -1 else (None, 0)
    except json.JSONDecodeError as err:
        raise SampleError("bad_tools", f"the ToolACE tool list is not JSON ({err.msg})", origin) from err
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise SampleError("bad_tools", "no JSON list of tools after 'functions in JSON format'", origin)
    tools = [{"type": "function", "function": json_schema_types(t)} for t in tools]
    return drop_sentences(system[:start] + system[end:], PROTOCOL_RE), tools


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in JSON_NAMES:  # JSON spellings inside Python syntax
        return JSON_NAMES[node.id]
    return ast.literal_eval(node)


def _split_calls(body: str) -> list[tuple[str, str]]:
    """``Name(args), Other(args)`` → ``[(name, args), …]``, respecting quotes and brackets."""
    calls, i = [], 0
    while i < len(body):
        open_at = body.index("(", i)
        name = body[i:open_at].strip().lstrip(",").strip()
        depth, quote, j = 0, "", open_at
        while j < len(body):
            ch = body[j]
            if quote:
                quote = "" if ch == quote and body[j - 1] != "\\" else quote
            elif ch in "'\"":
                quote = ch
            elif ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        calls.append((name, body[open_at + 1 : j]))
        i = j + 1
        while i < len(body) and body[i] in ", \n\t":
            i += 1
    return calls


def parse_calls(value: str, origin: str) -> list[dict[str, Any]]:
    """``[Name(arg=value, …), …]`` as OpenAI tool calls."""
    calls = []
    try:
        for name, args in _split_calls(value.strip()[1:-1].strip()):
            node = ast.parse(f"f({args})", mode="eval").body
            assert isinstance(node, ast.Call) and not node.args and all(k.arg for k in node.keywords)
            arguments = {k.arg: _value(k.value) for k in node.keywords}
            calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    except (ValueError, SyntaxError, AssertionError, RecursionError) as err:
        raise SampleError(
            "bad_tool_call",
            f"a ToolACE call is not Name(arg=value, …) with literal values: {value[:80]!r}",
            origin,
        ) from err
    return calls


def read(row: dict[str, Any], origin: str = "") -> tuple[list[dict[str, Any]], list[Any]]:
    """A ToolACE row's turns as OpenAI messages (its system text first), and its tools."""
    system = _system_of(row)
    if "conversations" not in row or system is None or TOOLS_INTRO not in system:
        raise SampleError(
            "no_messages", "format 'toolace' needs 'conversations' and a ToolACE 'system'", origin
        )
    text, tools = parse_system(system, origin)
    pending = [0]  # calls of the latest assistant turn

    def parse_turn(role: str, value: str, origin: str) -> list[dict[str, Any]]:
        if role == "assistant" and CALLS_RE.match(value):
            calls = parse_calls(value, origin)
            pending[0] = len(calls)
            return [{"role": "assistant", "content": "", "tool_calls": calls}]
        if role == "tool":
            try:
                results = json.loads(value)
            except json.JSONDecodeError:
                results = None
            if isinstance(results, list) and len(results) == pending[0] > 1:
                return [{"role": "tool", "content": json.dumps(r, ensure_ascii=False)} for r in results]
        return plain_turn(role, value, origin)

    messages = conversations_to_messages(row["conversations"], origin, parse_turn)
    return ([{"role": "system", "content": text}] if text else []) + messages, tools
