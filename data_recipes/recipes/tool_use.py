"""``tool_use``: tools declared in the system turn, calls that name them with object arguments.

Checks, on the whole conversation (history included, since a bad call in the prompt still teaches
the format by example):

* the row declares tools (``no_tools``);
* every call names a declared tool (``undeclared_tool``); the normalizer already refused arguments
  that are not a JSON object (``bad_tool_arguments``);
* calls written inside the reasoning (interleaved thinking: ``<tool_call>`` … ``<tool_response>``
  within one ``<think>`` block) are checked the same way, and must be strict JSON since they are
  trained as written;
* with ``require_call`` (default), at least one call in the *trained* replies (``no_tool_call``): a
  call that sits only in masked history (``history: last`` trains the final reply) teaches nothing
  about calling, so such a conversation is dropped with that cause named.

Tool results are never trained: ``tool`` turns are masked by the template, and results inside a
reasoning block by :func:`~data_recipes.recipes.common.mask_inline_tool_responses`.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation, SampleError, load_json
from data_recipes.recipes.common import Prepared, RecipeOptions, thinking_flag, trained

INLINE_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def declared_tools(conv: Conversation) -> set[str]:
    return {t["function"]["name"] for t in conv.tools}


def inline_calls(reasoning: str, origin: str) -> list[tuple[str, Any]]:
    """``(name, arguments)`` of each ``<tool_call>`` written inside a reasoning block."""
    if reasoning.count("<tool_call>") != reasoning.count("</tool_call>"):
        raise SampleError("bad_tool_call", "unbalanced <tool_call> tags inside the reasoning", origin)
    if reasoning.count("<tool_response>") != reasoning.count("</tool_response>"):
        raise SampleError("bad_tool_response", "unbalanced <tool_response> tags inside the reasoning", origin)
    calls = []
    for block in INLINE_CALL_RE.findall(reasoning):
        call = load_json(block, "bad_tool_call", "an interleaved <tool_call>", origin)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise SampleError("bad_tool_call", "an interleaved <tool_call> has no function name", origin)
        args = call.get("arguments", {})
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        if not isinstance(args, dict):
            raise SampleError(
                "bad_tool_arguments",
                f"interleaved call {call['name']!r}: arguments are not an object",
                origin,
            )
        calls.append((call["name"], args))
    return calls


def _call_names(m, origin: str) -> list[str]:
    names = [c.name for c in m.tool_calls]
    if m.reasoning:
        names += [name for name, _ in inline_calls(m.reasoning, origin)]
    return names


def prepare(
    conv: Conversation,
    options: RecipeOptions,
    policy: Literal["last", "keep"],
    tokenizer: PreTrainedTokenizerBase,
) -> Prepared:
    if not conv.tools:
        raise SampleError("no_tools", "a tool_use conversation must declare its tools", conv.origin)
    declared = declared_tools(conv)
    calls_per_turn = [_call_names(m, conv.origin) for m in conv.messages]
    for i, names in enumerate(calls_per_turn):
        for name in names:
            if name not in declared:
                raise SampleError(
                    "undeclared_tool",
                    f"message {i} calls {name!r}; declared: {', '.join(sorted(declared))}",
                    conv.origin,
                )
    turns = trained(conv, policy)
    if options.require_call and not any(calls_per_turn[i] for i in turns):
        in_history = sum(map(len, calls_per_turn))
        where = (
            f"; its {in_history} call(s) are in masked history (history: {policy}; "
            "`history: expand` trains every reply)"
            if in_history
            else ""
        )
        raise SampleError(
            "no_tool_call",
            f"no tool call in the trained reply (messages {turns}){where} (options.require_call)",
            conv.origin,
        )
    has_reasoning = any(conv.messages[i].reasoning for i in turns)
    return Prepared(conv, thinking_flag(conv, options, default=has_reasoning), policy)
