"""``length_control`` (Hermes 4 stage 2): teach the model to close ``</think>`` at a token budget.

Each trained turn's reasoning is tokenized on its own; if it is longer than ``options.budget``
tokens, it is cut to exactly ``budget`` tokens (fewer only if the cut would split a UTF-8 character;
trailing whitespace is stripped like all reasoning), and the template closes it with
``\\n</think>\\n`` as usual. The budget counts the reasoning's own tokens: in the rendered sample the
cut may merge with the following newline, so the in-context count can differ by one. The answer after it is kept as written: it is masked, not changed.

In a sample with a cut, only the ``</think>`` token and the ``<|eot_id|>`` of each cut turn carry
loss (Hermes 4 §3.1: the truncated reasoning is off-policy text, the answer is context). Samples under
the budget keep the normal mask. Conversations without reasoning are ``missing_reasoning``. The mask
is applied after rendering, by :func:`~data_recipes.recipes.common.restrict_cut_labels`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation
from data_recipes.recipes.common import Prepared, RecipeOptions, require_reasoning, thinking_flag


def cut_reasoning(text: str, budget: int, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """``text`` cut to its first ``budget`` tokens, or None if it already fits."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return None
    n = budget
    cut = tokenizer.decode(ids[:n], skip_special_tokens=False)
    while n > 1 and cut.endswith("\ufffd") and not text.startswith(cut):  # a split multi-byte character
        n -= 1
        cut = tokenizer.decode(ids[:n], skip_special_tokens=False)
    return cut.rstrip()


def prepare(
    conv: Conversation,
    options: RecipeOptions,
    policy: Literal["last", "keep"],
    tokenizer: PreTrainedTokenizerBase,
) -> Prepared:
    assert options.budget is not None, "the mixture config requires options.budget for length_control"
    turns = require_reasoning(conv, policy)
    messages = list(conv.messages)
    cut_turns = []
    for i in turns:
        cut = cut_reasoning(messages[i].reasoning or "", options.budget, tokenizer)
        if cut is not None:
            messages[i] = replace(messages[i], reasoning=cut)
            cut_turns.append(i)
    conv = replace(conv, messages=tuple(messages))
    return Prepared(conv, thinking_flag(conv, options, default=True), policy, tuple(cut_turns))
