"""Preference pairs (chosen / rejected) → one record per pair: both sides rendered and labelled like SFT.

A preference build (``kind: preference`` in the mixture config) reads rows in the two common pair
formats, with OpenAI-style messages inside (reasoning, tool calls and tool results render exactly as
in SFT):

``prompt`` (TRL's conversational preference format)
    ``{"prompt": [messages…], "chosen": [assistant messages…], "rejected": [assistant messages…],
    "tools": [...]}``; each side is ``prompt + side``.
``full`` (UltraFeedback-binarized style)
    ``{"chosen": [whole conversation], "rejected": [whole conversation]}`` sharing every message up
    to and including the last user turn.

Each side becomes a :class:`~data_recipes.messages.Conversation`, is checked by the source's recipe,
rendered by the one template with the build's history policy and labelled by the same rules
(:func:`~data_recipes.recipes.apply_label_rules`). Both sides use one system prompt: the thinking
prompt is on for both when the recipe turns it on for either, so the prompts stay token-identical.

A kept pair is one record whose ``input_ids`` / ``labels`` are the chosen tokens followed by the
rejected tokens, with ``chosen_length`` marking the boundary; the packer treats the pair as one item
(both sides always land in the same row) and writes two sequences into the row's ``seq_lengths`` and
``position_ids`` (positions restart at the rejected side, so it never attends to the chosen one). In a
packed row of a preference dataset, sequences ``2k`` and ``2k + 1`` are the chosen and rejected side
of one pair.

Drops (counted with ``file:line``; ``--strict`` turns them into errors): ``missing_side``,
``bad_prompt`` (a ``prompt`` that is not a list of messages), ``bad_side``, ``side_ends_on_user``,
``no_user_turn``, ``prompt_mismatch`` (the sides' prompts differ), ``identical_sides``,
``no_trained_tokens`` (a side with nothing to score), every SFT reason from the formats and recipes
(the detail names the side), and ``too_long`` from the builder for a pair over ``max_seq_len``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from data_recipes.checks import audit, is_audited
from data_recipes.formats.columns import is_empty
from data_recipes.messages import Conversation, SampleError, conversation_from_openai
from data_recipes.pipeline import (
    RECORD_COLUMNS,
    WorkerContext,
    _error_record,
    _sample_record,
    get_tokenizer,
    parse_row,
    render_guarded,
)
from data_recipes.recipes import RECIPES
from data_recipes.recipes.common import Prepared, apply_label_rules
from data_recipes.render import RenderedSample, RenderOptions

PairFormat = Literal["prompt", "full"]
SIDES = ("chosen", "rejected")
PAIR_COLUMNS = ("prompt", "chosen", "rejected", "tools")


def pair_format(row: Any, origin: str = "") -> PairFormat:
    """``prompt`` (TRL conversational) or ``full`` (UltraFeedback-binarized); SampleError otherwise."""
    if not isinstance(row, dict):
        raise SampleError("missing_side", f"row is {type(row).__name__}, expected a JSON object", origin)
    missing = [side for side in SIDES if row.get(side) in (None, "", [])]
    if missing:
        keys = ", ".join(sorted(map(str, row))[:8]) or "none"
        raise SampleError(
            "missing_side", f"row has no {' and no '.join(map(repr, missing))} (keys: {keys})", origin
        )
    return "prompt" if "prompt" in row else "full"


def _messages(value: Any, what: str, reason: str, origin: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SampleError(reason, f"{what} is a string, expected a list of messages", origin) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise SampleError(reason, f"{what} must be a non-empty list of message objects", origin)
    return value


def _reply_start(conv: Conversation, side: str) -> int:
    """Index of the first message after the last user turn (where the side's reply begins)."""
    roles = [m.role for m in conv.messages]
    if roles[-1] in ("user", "system"):
        raise SampleError("side_ends_on_user", f"the {side} side ends on a {roles[-1]} turn", conv.origin)
    if "user" not in roles:
        raise SampleError("no_user_turn", f"the {side} side has no user turn to answer", conv.origin)
    return len(roles) - roles[::-1].index("user")


def split_pair(row: Any, origin: str = "") -> tuple[PairFormat, Conversation, Conversation]:
    """The row's pair format and its chosen and rejected conversations, checked to share the prompt."""
    fmt = pair_format(row, origin)
    prompt = _messages(row["prompt"], "'prompt'", "bad_prompt", origin) if fmt == "prompt" else []
    convs = []
    for side in SIDES:
        messages = prompt + _messages(row[side], f"'{side}'", "bad_side", origin)
        try:
            convs.append(conversation_from_openai({"messages": messages, "tools": row.get("tools")}, origin))
        except SampleError as err:
            raise SampleError(err.reason, f"{side} side: {err.detail}", origin) from err
    chosen, rejected = convs
    c_at, r_at = _reply_start(chosen, "chosen"), _reply_start(rejected, "rejected")
    if chosen.messages[:c_at] != rejected.messages[:r_at]:
        first = next(
            (i for i, (a, b) in enumerate(zip(chosen.messages, rejected.messages, strict=False)) if a != b),
            min(c_at, r_at),
        )
        raise SampleError("prompt_mismatch", f"the sides' prompts differ at message {first}", origin)
    if chosen.messages[c_at:] == rejected.messages[r_at:]:
        raise SampleError("identical_sides", "chosen and rejected replies are identical", origin)
    return fmt, chosen, rejected


def prepare_pair(
    recipe: str, chosen: Conversation, rejected: Conversation, ctx: WorkerContext, source: int, tokenizer
) -> tuple[Prepared, Prepared]:
    """Both sides checked by the recipe, rendered with one system prompt (see the module docstring)."""
    policy: Literal["last", "keep"] = "keep" if ctx.history == "keep" else "last"
    options = ctx.sources[source].options
    preps = []
    for side, conv in zip(SIDES, (chosen, rejected), strict=True):
        try:
            preps.append(RECIPES[recipe](conv, options, policy, tokenizer))
        except SampleError as err:
            raise SampleError(err.reason, f"{side} side: {err.detail}", conv.origin) from err
    thinking = preps[0].thinking or preps[1].thinking
    return replace(preps[0], thinking=thinking), replace(preps[1], thinking=thinking)


def pair_record(source: int, fmt: str, chosen: RenderedSample, rejected: RenderedSample) -> dict[str, Any]:
    """One builder record for a kept pair: chosen tokens, then rejected tokens."""
    both = RenderedSample(
        list(chosen.input_ids) + list(rejected.input_ids),
        list(chosen.labels) + list(rejected.labels),
        chosen.text + rejected.text,
        chosen.origin,
        fallback=chosen.fallback or rejected.fallback,
    )
    record = _sample_record(source, fmt, both, False)
    record["chosen_length"] = len(chosen.input_ids)
    return record


def ignored_columns(row: Any) -> list[str]:
    """The row's non-empty columns that a pair does not use (for the manifest's ``ignored_fields``)."""
    if not isinstance(row, dict):
        return []
    return sorted(str(k) for k, v in row.items() if k not in PAIR_COLUMNS and not is_empty(v))


def _prepare_row(source: int, origin: str, raw: str, ctx: WorkerContext, tokenizer):
    """(format, ignored columns, prepared pair or the error that drops the row)."""
    fmt, ignored = "unknown", []
    try:
        row = parse_row(raw, origin)
        ignored = ignored_columns(row)
        fmt, chosen, rejected = split_pair(row, origin)
        return (
            fmt,
            ignored,
            prepare_pair(ctx.sources[source].recipe, chosen, rejected, ctx, source, tokenizer),
        )
    except (AssertionError, KeyboardInterrupt):
        raise
    except Exception as err:  # SampleError: a counted drop; anything else: counted as unexpected_error
        return fmt, ignored, err


def _render_pairs(group, tokenizer, ctx: WorkerContext, slots: list) -> None:
    """Render every side of the group's pairs in one batch (each side audited like an SFT sample,
    :mod:`data_recipes.checks`); fill each pair's slot with its record."""
    (thinking, policy), items = group
    options = RenderOptions(thinking=thinking, history=policy, check=ctx.check != "off")
    convs = [p.conv for item in items for p in item[3]]
    results = render_guarded(convs, tokenizer, options)
    audited = [
        isinstance(r, RenderedSample) and is_audited(r.text, ctx.check, ctx.check_rate) for r in results
    ]
    audit([(c, r) for c, r, a in zip(convs, results, audited, strict=True) if a], tokenizer, options)
    for k, (slot, source, fmt, pair, ignored) in enumerate(items):
        sides = []
        for side, prep, result in zip(SIDES, pair, results[2 * k : 2 * k + 2], strict=True):
            if isinstance(result, SampleError):
                err = SampleError(result.reason, f"{side} side: {result.detail}", result.origin)
                break
            sample = apply_label_rules(result, prep)
            if sample.num_trained == 0:
                err = SampleError("no_trained_tokens", f"the {side} side has no trained token", sample.origin)
                break
            sides.append(sample)
        record = (
            pair_record(source, fmt, *sides)
            if len(sides) == 2
            else _error_record(source, pair[0].conv.origin, fmt, err)
        )
        record["audited"] = len(sides) == 2 and any(audited[2 * k : 2 * k + 2])
        slots[slot] = {**record, "ignored": ignored}


def process_pair_batch(batch: dict[str, list], ctx: WorkerContext) -> dict[str, list]:
    """A batch of raw pair rows as builder records (one per row), like ``pipeline.process_batch``."""
    tokenizer: PreTrainedTokenizerBase = get_tokenizer(ctx.tokenizer)
    slots: list[dict[str, Any] | None] = []
    groups: dict[tuple[bool, str], list] = {}
    for source, origin, raw in zip(batch["source"], batch["origin"], batch["raw"], strict=True):
        fmt, ignored, result = _prepare_row(source, origin, raw, ctx, tokenizer)
        if isinstance(result, Exception):
            slots.append({**_error_record(source, origin, fmt, result), "ignored": ignored})
            continue
        key = (result[0].thinking, result[0].policy)
        groups.setdefault(key, []).append((len(slots), source, fmt, result, ignored))
        slots.append(None)
    for group in groups.items():
        _render_pairs(group, tokenizer, ctx, slots)
    assert all(r is not None for r in slots)
    return {col: [r[col] for r in slots] for col in RECORD_COLUMNS}


def sequence_lengths(lengths: np.ndarray, chosen_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-record sequences for packing: ``(sequence lengths, sequences per record)``.

    An SFT record (``chosen_length`` 0) is one sequence; a pair is two (chosen, rejected)."""
    chosen_lengths = np.asarray(chosen_lengths, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    is_pair = chosen_lengths > 0
    first = np.where(is_pair, chosen_lengths, lengths)
    second = np.where(is_pair, lengths - chosen_lengths, 0)
    both = np.stack([first, second], axis=1).ravel()
    return both[both > 0], 1 + is_pair.astype(np.int64)
