"""Recipes: what a source's conversations must look like and how they are rendered and masked.

One small module per recipe, each with ``prepare(conv, options, policy, tokenizer) -> Prepared``
(the protocol, the shared options and the post-render label rules are in
:mod:`data_recipes.recipes.common`). :data:`RECIPES` is the one list of recipes: a source's
``recipe:`` name is looked up there, and the mixture config accepts exactly its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation
from data_recipes.recipes import json_schema, length_control, plain, reasoning, tool_use
from data_recipes.recipes.common import Prepared, RecipeOptions

Recipe = Callable[[Conversation, RecipeOptions, Literal["last", "keep"], PreTrainedTokenizerBase], Prepared]

RECIPES: dict[str, Recipe] = {
    "reasoning": reasoning.prepare,
    "plain": plain.prepare,
    "tool_use": tool_use.prepare,
    "json_schema": json_schema.prepare,
    "length_control": length_control.prepare,
}
RECIPE_NAMES: tuple[str, ...] = tuple(RECIPES)
# The config field type: config_io checks a Literal's values, so the mixture accepts exactly these names.
RecipeName = Literal[RECIPE_NAMES]  # type: ignore[valid-type]
