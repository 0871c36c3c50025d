"""``plain`` (non-reasoning): trained assistant turns carry no ``<think>`` block.

Rendered with the default system prompt (``thinking=False``). A trained turn with reasoning is
``unexpected_reasoning``: put such a source under ``reasoning`` instead. Reasoning in *earlier*
turns is allowed; the ``last`` policy strips it, as at inference.
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation, SampleError
from data_recipes.recipes.common import Prepared, RecipeOptions, thinking_flag, trained


def prepare(
    conv: Conversation,
    options: RecipeOptions,
    policy: Literal["last", "keep"],
    tokenizer: PreTrainedTokenizerBase,
) -> Prepared:
    for i in trained(conv, policy):
        if conv.messages[i].reasoning:
            raise SampleError(
                "unexpected_reasoning",
                f"trained assistant message {i} has reasoning in a plain source",
                conv.origin,
            )
    return Prepared(conv, thinking_flag(conv, options, default=False), policy)
