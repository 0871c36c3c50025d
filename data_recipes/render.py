"""Render a conversation into token ids and labels with the one chat template.

``render`` renders the final string with the template (``data_recipes/chat_template.jinja``) through
the same Jinja engine ``apply_chat_template`` uses, takes the trained character spans from the
template's ``{% generation %}`` markers, tokenizes the whole string once with offsets, and labels the
tokens inside those spans. Spans come from the final string, never from diffing re-rendered prefixes,
so stripping earlier reasoning cannot shift them.

History policies (multi-turn reasoning):

``last``
    History is rendered exactly as at inference: assistant turns before the last user message lose
    their reasoning. Only the final reply is trained: every assistant turn after the last user
    message (a tool call, the tool results and the answer after them form one reply).
``expand``
    One ``last`` sample per reply, each cut after that reply, so every reply is trained once with its
    inference-time history.
``keep``
    All reasoning is kept and all replies are trained (the template's ``keep_cots=True``).

No policy ever renders an empty ``<think></think>``: a turn either shows its reasoning or no tags.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import itemgetter
from typing import Literal

import numpy as np
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation, Message, SampleError, to_template_messages
from data_recipes.template_engine import render_with_spans
from data_recipes.tokenizer import BOS, BOS_ID, EOT, NUM_BPE_RANKS

IGNORE_INDEX = -100
HistoryPolicy = Literal["last", "expand", "keep"]
HISTORY_POLICIES: tuple[str, ...] = ("last", "expand", "keep")


@dataclass(frozen=True)
class RenderOptions:
    thinking: bool = False
    """Use the deep-thinking system prompt (the template's ``thinking=True``)."""
    history: HistoryPolicy = "last"
    """How earlier turns' reasoning and replies are treated; see the module docstring."""
    check: bool = True
    """Verify the invariants on every sample (prefix parity, decoded spans, single BOS)."""

    def __post_init__(self) -> None:
        if self.history not in HISTORY_POLICIES:
            raise ValueError(f"history must be one of {HISTORY_POLICIES}, got {self.history!r}")


@dataclass
class RenderedSample:
    input_ids: list[int]
    labels: list[int]
    """Same length as ``input_ids``; ``-100`` where not trained (unshifted, HF convention)."""
    text: str
    origin: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """Trained character spans of ``text``."""

    @property
    def num_trained(self) -> int:
        return len(self.labels) - list(self.labels).count(IGNORE_INDEX)


def template_kwargs(options: RenderOptions) -> dict:
    """The chat-template variables that reproduce this policy with ``apply_chat_template``."""
    keep = options.history == "keep"
    return {"thinking": options.thinking, "keep_cots": keep, "last_reply_only": not keep}


def render_text(
    conv: Conversation, options: RenderOptions, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The template's rendering of ``conv`` and its generation (trained) character spans."""
    try:
        return render_with_spans(
            messages=to_template_messages(conv),
            tools=list(conv.tools) or None,
            add_generation_prompt=add_generation_prompt,
            bos_token=BOS,
            **template_kwargs(options),
        )
    except TemplateError as err:
        raise SampleError("template_error", str(err), conv.origin) from err


def label_tokens(
    input_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    origin: str,
) -> list[int]:
    """Labels for tokens whose character range lies inside a span; a token across a span edge is an error."""
    n = len(input_ids)
    if not spans or not n:
        return [IGNORE_INDEX] * n
    ids = np.fromiter(input_ids, dtype=np.int64, count=n)
    labels = np.full(n, IGNORE_INDEX, dtype=np.int64)
    # fromiter over the flattened pairs is ~10x faster than np.asarray on a list of tuples
    off = np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=2 * n).reshape(n, 2)
    span_arr = np.asarray(spans, dtype=np.int64)
    # The span that could hold each token: the last one starting at or before the token's end - 1.
    k = np.searchsorted(span_arr[:, 0], off[:, 1] - 1, side="right") - 1
    valid = (k >= 0) & (off[:, 1] > off[:, 0])
    lo, hi = span_arr[np.clip(k, 0, None), 0], span_arr[np.clip(k, 0, None), 1]
    overlaps = valid & (off[:, 0] < hi) & (off[:, 1] > lo)
    inside = overlaps & (off[:, 0] >= lo) & (off[:, 1] <= hi)
    if (bad := np.flatnonzero(overlaps & ~inside)).size:
        raise SampleError(
            "span_boundary_in_token", f"token {int(bad[0])} crosses a trained-span edge", origin
        )
    labels[inside] = ids[inside]
    return labels.tolist()


def trained_turns(conv: Conversation, options: RenderOptions) -> list[int]:
    """Indices of the assistant messages the policy trains (mirrors the template's rule)."""
    last_user = max((i for i, m in enumerate(conv.messages) if m.role == "user"), default=-1)
    return [
        i
        for i, m in enumerate(conv.messages)
        if m.role == "assistant" and (options.history == "keep" or i > last_user)
    ]


def assistant_body(message: Message, with_reasoning: bool = True) -> str:
    """What a trained assistant turn must decode to (before its ``<|eot_id|>``), stated independently
    of the template so the invariant check compares two implementations."""
    head = f"<think>\n{message.reasoning}\n</think>\n" if (message.reasoning and with_reasoning) else ""
    pieces = [message.content] if message.content else []
    pieces += [f"<tool_call>\n{call.as_json()}\n</tool_call>" for call in message.tool_calls]
    return head + "\n".join(pieces)


def expand_history(conv: Conversation) -> list[Conversation]:
    """One conversation per reply, each cut after its last assistant turn (the ``expand`` policy)."""
    ends = []
    for i, m in enumerate(conv.messages):
        nxt = conv.messages[i + 1] if i + 1 < len(conv.messages) else None
        if m.role == "assistant" and (nxt is None or nxt.role in ("user", "system")):
            ends.append(i + 1)
    if not ends:
        return [conv]
    ends[-1] = len(conv.messages)  # the final reply keeps any trailing tool results, as `last` does
    return [
        replace(conv, messages=conv.messages[:end], origin=f"{conv.origin}#reply{k}" if conv.origin else "")
        for k, end in enumerate(ends)
    ]


def render_batch(
    convs: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, options: RenderOptions
) -> list[RenderedSample | SampleError]:
    """Render many conversations at once (batched tokenizer calls). ``expand`` is not applied here."""
    policy = replace(options, history="last") if options.history == "expand" else options
    results: list[RenderedSample | SampleError | None] = []
    rendered: list[tuple[int, Conversation, str, list[tuple[int, int]]]] = []
    for conv in convs:
        try:
            text, spans = render_text(conv, policy)
            rendered.append((len(results), conv, text, spans))
        except SampleError as err:
            results.append(err)
            continue
        results.append(None)
    backend = tokenizer.backend_tokenizer
    encodings = backend.encode_batch([text for _, _, text, _ in rendered], add_special_tokens=False)
    checked: list[tuple[int, Conversation, RenderedSample, list[tuple[int, int]]]] = []
    for (slot, conv, text, spans), enc in zip(rendered, encodings, strict=True):
        try:
            ids = enc.ids
            sample = RenderedSample(
                ids, label_tokens(ids, enc.offsets, spans, conv.origin), text, conv.origin, spans
            )
            results[slot] = sample
            checked.append((slot, conv, sample, enc.offsets))
        except SampleError as err:
            results[slot] = err
    if options.check:
        for slot, err in _check_batch(checked, tokenizer, policy):
            results[slot] = err
    return results  # type: ignore[return-value]


def render(conv: Conversation, tokenizer: PreTrainedTokenizerBase, options: RenderOptions) -> RenderedSample:
    """Render one conversation; raises :class:`SampleError`. Use :func:`render_all` for ``expand``."""
    (result,) = render_batch([conv], tokenizer, options)
    if isinstance(result, SampleError):
        raise result
    return result


def render_all(
    conv: Conversation, tokenizer: PreTrainedTokenizerBase, options: RenderOptions
) -> list[RenderedSample]:
    """All samples a conversation yields under the history policy (several for ``expand``)."""
    convs = expand_history(conv) if options.history == "expand" else [conv]
    return [render(c, tokenizer, options) for c in convs]


def check_invariants(
    sample: RenderedSample, conv: Conversation, tokenizer: PreTrainedTokenizerBase, options: RenderOptions
) -> None:
    """Raise :class:`SampleError` unless every sample invariant holds (see :func:`_check_batch`)."""
    enc = tokenizer.backend_tokenizer.encode(sample.text, add_special_tokens=False)
    if enc.ids != list(
        sample.input_ids
    ):  # render_batch guarantees this by construction; a given sample may not
        raise SampleError(
            "retokenize_mismatch", "tokenizing the rendered text does not give these ids", conv.origin
        )
    for _, err in _check_batch([(0, conv, sample, enc.offsets)], tokenizer, options):
        raise err


def _check_batch(
    items: Sequence[tuple[int, Conversation, RenderedSample, list[tuple[int, int]]]],
    tokenizer: PreTrainedTokenizerBase,
    options: RenderOptions,
) -> list[tuple[int, SampleError]]:
    """The per-sample invariants, with one batched decode and one batched encode for all samples.

    The ids come from tokenizing the whole rendered text once, and :func:`label_tokens` has already
    refused tokens that straddle a span edge, so "tokenizing the whole text gives the renderer's ids"
    holds by construction. Checked here: a single BOS at 0; at least one trained token; decoded
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
        n_bos = ids.count(BOS_ID)
        if not ids or ids[0] != BOS_ID or n_bos != 1:
            failures.append(
                (slot, SampleError("bos_invariant", f"expected one BOS at position 0, found {n_bos}", origin))
            )
            continue
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


def trained_runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` token ranges of consecutive trained labels, in order.

    After rendering, run ``k`` is trained turn ``trained_turns(conv, options)[k]`` (turns are
    separated by masked headers, so two turns never share a run).
    """
    trained = np.fromiter(labels, dtype=np.int64, count=len(labels)) != IGNORE_INDEX
    edges = np.diff(np.concatenate(([False], trained, [False])).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))
