"""The audit: the full invariant checks of rendered samples, on every sample (``check: full``) or on a
deterministic share of them (``check: sample``, the default, at ``check_rate``).

The renderer makes ids and labels exact by construction (:mod:`data_recipes.segments`) and checks the
cheap invariants on every sample (:func:`data_recipes.render.basic_check`). The audit derives the
rest again the slow way and compares:

* the whole text tokenized at once, with offsets, gives the sample's ids, and labelling those tokens
  by their character offsets (:func:`~data_recipes.render.label_tokens`) gives its labels;
* a single BOS at 0; the decoded trained runs equal :func:`~data_recipes.render.assistant_body` +
  ``<|eot_id|>`` (the format restated independently of the template, through the tokenizer's decode);
* every trained turn's inference prompt (history + generation prompt, rendered again) is a token
  prefix of the render.

A failure here is a bug in the renderer or the template, not bad data, so the build stops with an
:class:`AuditError` naming the sample's ``file:line`` instead of dropping it. The audited share is
the samples whose rendered text hashes (xxh3-64) below ``rate x 2^64``: the same samples on every
run, whatever the number of workers or the batch size.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Literal

import xxhash
from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation, SampleError
from data_recipes.render import (
    RenderedSample,
    RenderOptions,
    assistant_body,
    exact_encode,
    label_tokens,
    render_text,
    trained_runs,
    trained_turns,
)
from data_recipes.tokenizer import BOS_ID, EOT, NUM_BPE_RANKS

CheckMode = Literal["sample", "full", "off"]
CHECK_MODES: tuple[str, ...] = ("sample", "full", "off")


class AuditError(RuntimeError):
    """A rendered sample failed the audit: the fast path and the slow derivation disagree."""


def is_audited(text: str, mode: str, rate: float) -> bool:
    """Whether the audit checks this rendered text (deterministic: a hash of the text)."""
    if mode == "full":
        return True
    return mode == "sample" and xxhash.xxh3_64_intdigest(text.encode()) < rate * 2.0**64


def audit(pairs: Sequence[tuple[Conversation, RenderedSample]], tokenizer, options: RenderOptions) -> None:
    """Raise :class:`AuditError` for the first sample that fails :func:`find_violations`."""
    if not pairs:
        return
    for slot, err in find_violations(pairs, tokenizer, options)[:1]:
        raise AuditError(
            f"{err.origin or f'sample {slot}'}: the render audit failed ({err.reason}: {err.detail[:300]}). "
            "This is a bug in the renderer or the chat template, not in the data: please report it "
            "with this sample (`check: full` reproduces it on every sample)."
        )


def check_invariants(
    sample: RenderedSample, conv: Conversation, tokenizer: PreTrainedTokenizerBase, options: RenderOptions
) -> None:
    """Raise :class:`SampleError` unless every invariant of :func:`find_violations` holds."""
    for _, err in find_violations([(conv, sample)], tokenizer, options)[:1]:
        raise err


def find_violations(
    pairs: Sequence[tuple[Conversation, RenderedSample]], tokenizer, options: RenderOptions
) -> list[tuple[int, SampleError]]:
    """``(index, error)`` for every sample that fails a check; samples are rendered (unlabelled) output."""
    failures, items = [], []
    policy = replace(options, history="last") if options.history == "expand" else options
    encoded = exact_encode([sample.text for _, sample in pairs], tokenizer)
    for slot, ((conv, sample), (ids, offsets)) in enumerate(zip(pairs, encoded, strict=True)):
        if ids != list(sample.input_ids):
            detail = "tokenizing the whole rendered text does not give these ids"
            failures.append((slot, SampleError("retokenize_mismatch", detail, conv.origin)))
            continue
        if (n_bos := ids.count(BOS_ID)) != 1 or ids[0] != BOS_ID:
            detail = f"expected one BOS at position 0, found {n_bos}"
            failures.append((slot, SampleError("bos_invariant", detail, conv.origin)))
            continue
        try:
            labels = label_tokens(ids, offsets, sample.spans, conv.origin)
        except SampleError as err:
            failures.append((slot, err))
            continue
        if labels != list(sample.labels):
            detail = "labelling the tokens by their offsets does not give these labels"
            failures.append((slot, SampleError("label_mismatch", detail, conv.origin)))
            continue
        items.append((slot, conv, sample, offsets))
    return sorted(failures + _check_batch(items, tokenizer, policy), key=itemgetter(0))


def _check_batch(
    items: Sequence[tuple[int, Conversation, RenderedSample, list[tuple[int, int]]]],
    tokenizer: PreTrainedTokenizerBase,
    options: RenderOptions,
) -> list[tuple[int, SampleError]]:
    """The per-sample invariants, with one batched decode and one batched encode for all samples.

    ``items`` already passed the whole-text comparison of :func:`find_violations` (``offsets`` are the
    whole text's, with one BOS at 0). Checked here: at least one trained token; decoded
    trained runs equal :func:`assistant_body` (an independent statement of the format) + EOT; every
    trained turn's inference prompt (history + generation prompt) is a token prefix of the render.

    The prefix check encodes only the prompt's last segment: the tokenizer splits text at added tokens
    before anything else and encodes each segment on its own, so once the prompt is a string prefix
    of the render and a token boundary falls where it ends, the two tokenizations agree up to the
    prompt's last added token, and only the text after it can differ (an added token straddling the
    prompt's end breaks the boundary). The property tests compare against a full prompt encode.
    """
    failures: list[tuple[int, SampleError]] = []
    runs_of, prompts, owners, decode_jobs = {}, [], [], []
    for slot, conv, sample, _ in items:
        ids, origin = sample.input_ids, conv.origin
        runs = trained_runs(sample.labels)
        if not runs:
            failures.append((slot, SampleError("no_trained_tokens", "no assistant token is trained", origin)))
            continue
        runs_of[slot] = runs
        decode_jobs += [ids[a:b] for a, b in runs]
        for turn in trained_turns(conv, options):
            history = replace(conv, messages=conv.messages[:turn])
            prompts.append(render_text(history, options, add_generation_prompt=True)[0])
            owners.append((slot, turn))
    by_slot = {slot: (conv, sample, offsets) for slot, conv, sample, offsets in items}
    failures += _check_trained_spans(runs_of, decode_jobs, by_slot, tokenizer, options)
    failures += _check_prompt_prefixes(owners, prompts, by_slot, tokenizer, {slot for slot, _ in failures})
    return failures


_BySlot = dict[int, tuple[Conversation, RenderedSample, list[tuple[int, int]]]]


def _check_trained_spans(
    runs_of: dict[int, list[tuple[int, int]]],
    decode_jobs: list[list[int]],
    by_slot: _BySlot,
    tokenizer: PreTrainedTokenizerBase,
    options: RenderOptions,
) -> list[tuple[int, SampleError]]:
    """Decoded trained runs (one batched decode) against :func:`assistant_body` + EOT per trained turn."""
    failures = []
    decoded = iter(tokenizer.backend_tokenizer.decode_batch(decode_jobs, skip_special_tokens=False))
    for slot, runs in runs_of.items():
        conv = by_slot[slot][0]
        got = [next(decoded) for _ in runs]
        expected = [assistant_body(conv.messages[i]) + EOT for i in trained_turns(conv, options)]
        if got != expected:
            detail = f"decoded trained spans {got!r} != {expected!r}"
            failures.append((slot, SampleError("trained_span_mismatch", detail, conv.origin)))
    return failures


def _check_prompt_prefixes(
    owners: list[tuple[int, int]],
    prompts: list[str],
    by_slot: _BySlot,
    tokenizer: PreTrainedTokenizerBase,
    failed: set[int],
) -> list[tuple[int, SampleError]]:
    """Each trained turn's inference prompt is a token prefix of its render (slots in ``failed`` skip)."""
    failures = []
    tails = [
        _prompt_tail(by_slot[slot][1], by_slot[slot][2], prompt)
        for (slot, _), prompt in zip(owners, prompts, strict=True)
    ]
    tail_ids = iter(
        tokenizer.backend_tokenizer.encode_batch([t[2] for t in tails if t], add_special_tokens=False)
    )
    for (slot, turn), tail in zip(owners, tails, strict=True):
        conv, sample, _ = by_slot[slot]
        ok = tail is not None and sample.input_ids[tail[0] : tail[1]] == next(tail_ids).ids
        if slot not in failed and not ok:
            detail = f"the inference prompt for message {turn} is not a token prefix"
            failures.append((slot, SampleError("prefix_mismatch", detail, conv.origin)))
            failed.add(slot)
    return failures


def _prompt_tail(
    sample: RenderedSample, offsets: Sequence[tuple[int, int]], prompt: str
) -> tuple[int, int, str] | None:
    """``(first, end, tail)``: the prompt is a token prefix iff ``encode(tail) == input_ids[first:end]``.

    None when it cannot be: the prompt is not a string prefix, or no token boundary falls at its end.
    """
    end_char = len(prompt)
    if not sample.text.startswith(prompt):
        return None
    end = bisect_right(offsets, end_char, key=itemgetter(1))  # tokens ending at or before the prompt's end
    if end == 0 or offsets[end - 1][1] != end_char or (end < len(offsets) and offsets[end][0] < end_char):
        return None
    last_added = next((j for j in range(end - 1, -1, -1) if sample.input_ids[j] >= NUM_BPE_RANKS), -1)
    tail_start = offsets[last_added][1] if last_added >= 0 else 0
    return last_added + 1, end, prompt[tail_start:]
