"""``reasoning``: every trained assistant turn opens with exactly one ``<think>`` block.

Rendered with ``thinking=True`` (the Hermes-4 deep-thinking system prompt, before the source's own
system text) unless the source's system prompt already carries it. Unbalanced or repeated think tags
are refused earlier, by the normalizer (``bad_think_tags``); a trained turn without reasoning is
``missing_reasoning``.
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation
from data_recipes.recipes.common import Prepared, RecipeOptions, require_reasoning, thinking_flag


def prepare(
    conv: Conversation,
    options: RecipeOptions,
    policy: Literal["last", "keep"],
    tokenizer: PreTrainedTokenizerBase,
) -> Prepared:
    require_reasoning(conv, policy)
    return Prepared(conv, thinking_flag(conv, options, default=True), policy)
