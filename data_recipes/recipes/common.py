"""What every recipe shares: its options, its result (:class:`Prepared`), the turn checks, and the
post-render label rules.

A recipe is a module with ``prepare(conv, options, policy, tokenizer) -> Prepared``, which raises
:class:`~data_recipes.messages.SampleError` for a conversation that breaks the recipe and may return a
changed conversation (length control cuts reasoning). :func:`apply_label_rules` runs after rendering:
it masks tool results written inside a reasoning block (interleaved tool use) in every recipe, and
restricts the labels of length-control cuts.

``policy`` is the render history policy of one sample (``last`` or ``keep``; ``expand`` has already
been split into ``last`` samples by the builder), so a recipe checks exactly the turns that are
trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from data_recipes.messages import Conversation, SampleError
from data_recipes.render import IGNORE_INDEX, RenderedSample, RenderOptions, trained_runs, trained_turns
from data_recipes.tokenizer import EOT_ID, HERMES_TAGS, THINK_CLOSE_ID

THINKING_PROMPT_MARK = "You are a deep thinking AI"
TOOL_RESPONSE_OPEN_ID = HERMES_TAGS["<tool_response>"]
TOOL_RESPONSE_CLOSE_ID = HERMES_TAGS["</tool_response>"]


@dataclass
class RecipeOptions:
    """Per-source recipe options (the ``options:`` mapping of a source in the mixture config)."""

    thinking: bool | None = None
    """Render with the deep-thinking system prompt. Default: on for ``reasoning`` and
    ``length_control``, on for ``tool_use`` / ``json_schema`` when a trained turn has reasoning, off
    for ``plain``. Never added twice: a source whose own system prompt already contains it is
    rendered without the template's copy."""
    budget: int | None = None
    """``length_control`` only (required there): reasoning longer than this many tokens is cut to
    exactly this many and closed with ``\\n</think>``."""
    require_call: bool = True
    """``tool_use`` only: drop conversations without any tool call (``no_tool_call``)."""

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"options.budget must be a positive number of tokens, got {self.budget}")


@dataclass(frozen=True)
class Prepared:
    """A conversation ready to render: the (possibly changed) conversation and how to render it."""

    conv: Conversation
    thinking: bool
    policy: Literal["last", "keep"] = "last"
    cut_turns: tuple[int, ...] = field(default=())
    """Message indices whose reasoning length control cut (their labels are restricted)."""

    @property
    def options(self) -> RenderOptions:
        return RenderOptions(thinking=self.thinking, history=self.policy)


def trained(conv: Conversation, policy: str) -> list[int]:
    """Indices of the assistant messages trained under ``policy``."""
    return trained_turns(conv, RenderOptions(history=policy))


def has_thinking_prompt(conv: Conversation) -> bool:
    return any(m.role == "system" and THINKING_PROMPT_MARK in m.content for m in conv.messages)


def thinking_flag(conv: Conversation, options: RecipeOptions, default: bool) -> bool:
    """Whether the template adds the thinking prompt (never when the source already has it)."""
    wanted = default if options.thinking is None else options.thinking
    return wanted and not has_thinking_prompt(conv)


def require_reasoning(conv: Conversation, policy: str) -> list[int]:
    """The trained turns, each of which must open with a reasoning block (``missing_reasoning``)."""
    turns = trained(conv, policy)
    for i in turns:
        if not conv.messages[i].reasoning:
            raise SampleError(
                "missing_reasoning",
                f"trained assistant message {i} has no reasoning (no reasoning field, no leading <think>, "
                "<|begin_of_thought|>, <reasoning> or <thinking> block)",
                conv.origin,
            )
    return turns


def mask_inline_tool_responses(sample: RenderedSample) -> RenderedSample:
    """Mask ``<tool_response>…</tool_response>`` inside trained turns (interleaved tool use).

    The environment, not the model, writes a tool result, even when it lands inside a reasoning block.
    """
    ids = sample.input_ids
    if TOOL_RESPONSE_OPEN_ID not in ids:
        return sample
    labels = list(sample.labels)
    inside = False
    for i, tok in enumerate(ids):
        if tok == TOOL_RESPONSE_OPEN_ID:
            inside = True
        if inside:
            labels[i] = IGNORE_INDEX
        if tok == TOOL_RESPONSE_CLOSE_ID:
            inside = False
    return replace(sample, labels=labels)


def restrict_cut_labels(sample: RenderedSample, prepared: Prepared) -> RenderedSample:
    """Keep only ``</think>`` and the closing ``<|eot_id|>`` of each cut turn trained (length control)."""
    turns = trained(prepared.conv, prepared.policy)
    runs = trained_runs(sample.labels)
    assert len(runs) == len(turns), (
        f"{sample.origin}: {len(runs)} trained runs for {len(turns)} trained turns"
    )
    labels = [IGNORE_INDEX] * len(sample.labels)
    ids = sample.input_ids
    for (start, end), turn in zip(runs, turns, strict=True):
        if turn not in prepared.cut_turns:
            continue
        close = ids.index(THINK_CLOSE_ID, start, end)
        assert ids[end - 1] == EOT_ID, f"{sample.origin}: a trained turn does not end with <|eot_id|>"
        labels[close], labels[end - 1] = THINK_CLOSE_ID, EOT_ID
    return replace(sample, labels=labels, spans=[])


def apply_label_rules(sample: RenderedSample, prepared: Prepared) -> RenderedSample:
    """Post-render label rules shared by all recipes."""
    sample = mask_inline_tool_responses(sample)
    if prepared.cut_turns:
        sample = restrict_cut_labels(sample, prepared)
    return sample
