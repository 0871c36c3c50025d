"""Hermes tags only where they belong.

The six tags (``<think>`` ``</think>`` ``<tool_call>`` ``</tool_call>`` ``<tool_response>``
``</tool_response>``) are single tokens, so text that *mentions* one is rendered with the tag token
itself. A trained answer that writes ``<tool_call>`` as prose teaches the model to open tool calls in
prose; a call argument holding ``</tool_call>`` is cut short by vLLM's ``hermes`` parser (its regex
stops at the first ``</tool_call>``), so that call could never be served. Their places:

* ``<think>`` / ``</think>``: only around the reasoning, written by the template;
* ``<tool_call>`` / ``</tool_call>``: only around a call, written by the template from ``tool_calls``,
  or around an interleaved call inside the reasoning (Hermes-4 interleaved thinking);
* ``<tool_response>`` / ``</tool_response>``: only around a tool result, written by the template, or
  around an interleaved result inside the reasoning.

So after normalization no tag may appear in system, user or tool text, assistant content, a call's
name or arguments, or the tool definitions; inside the reasoning only as whole, unnested interleaved
``<tool_call>…</tool_call>`` / ``<tool_response>…</tool_response>`` blocks. A sample that breaks this
is dropped (reason ``tag_out_of_place``, see ``messages.validate``).

Why not keep such text as ordinary characters: the tokenizer matches added tokens before BPE, so the
rendered string can only produce the tag token; writing BPE pieces for it instead would make the ids
differ from ``tokenizer(text)`` and from ``apply_chat_template``, and a server re-tokenizing the echoed
text would produce the tag token anyway. Exact and provable encoding is therefore not possible through
the text; dropping is the safe choice.
"""

from __future__ import annotations

import re
from typing import Literal

from data_recipes.tokenizer import HERMES_TAGS

Slot = Literal["text", "reasoning", "call", "tools"]
TAG_RE = re.compile("|".join(re.escape(tag) for tag in HERMES_TAGS))
_HOME = {
    "think": "outside the reasoning slot",
    "tool_call": "outside a tool call",
    "tool_response": "outside a tool result",
}
_BLOCKS = {"<tool_call>": "</tool_call>", "<tool_response>": "</tool_response>"}


def _why(tag: str, where: str) -> str:
    name = tag.strip("</>")
    return f"{tag} {_HOME[name]} (in {where})"


def misplaced_tag(text: str, slot: Slot, where: str) -> str | None:
    """Why ``text`` (a piece of ``slot``, described by ``where``) holds a tag out of place, or None.

    ``where`` names the piece for the message, e.g. ``"message 3, assistant content"``.
    """
    if slot != "reasoning":
        hit = TAG_RE.search(text)
        if hit is None:
            return None
        if slot == "call":
            cut = " (vLLM's hermes parser would end the call there)" if hit.group(0) == "</tool_call>" else ""
            return f"{hit.group(0)} inside {where}{cut}"
        return _why(hit.group(0), where)
    open_block: str | None = None  # the closing tag the current interleaved block waits for
    for hit in TAG_RE.finditer(text):
        tag = hit.group(0)
        if open_block is not None:
            if tag != open_block:
                return f"{tag} inside an interleaved {open_block.replace('/', '')} block (in {where})"
            open_block = None
        elif tag in _BLOCKS:
            open_block = _BLOCKS[tag]
        elif "think" in tag:
            return f"{tag} inside the reasoning text (the template writes the reasoning's tags; in {where})"
        else:
            return _why(tag, where)
    if open_block is not None:
        return f"an interleaved {open_block.replace('/', '')} block is not closed (in {where})"
    return None
