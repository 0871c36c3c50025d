"""Render a conversation into token ids and labels with the one chat template.

``render_batch`` renders each conversation once with the template (``data_recipes/chat_template.jinja``)
through the same Jinja engine ``apply_chat_template`` uses and takes the trained character spans from
the template's ``{% generation %}`` markers. The text is then cut at the span edges and all segments
of a batch are encoded in one tokenizer call (:mod:`data_recipes.segments`, which proves when that
gives exactly the ids of the whole text); a segment inside a span is trained as a whole. A sample
whose cuts are not provably safe is encoded whole with offsets and labelled per token
(:func:`label_tokens`), exact either way. Spans come from the final string, never from diffing
re-rendered prefixes, so stripping earlier reasoning cannot shift them.

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

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Literal

import numpy as np
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation, Message, SampleError, to_template_messages
from data_recipes.segments import IGNORE_INDEX, off_main_thread, segmenter_for
from data_recipes.template_engine import render_with_spans
from data_recipes.tokenizer import BOS, BOS_ID, EOT

HistoryPolicy = Literal["last", "expand", "keep"]
HISTORY_POLICIES: tuple[str, ...] = ("last", "expand", "keep")


@dataclass(frozen=True)
class RenderOptions:
    thinking: bool = False
    """Use the deep-thinking system prompt (the template's ``thinking=True``)."""
    history: HistoryPolicy = "last"
    """How earlier turns' reasoning and replies are treated; see the module docstring."""
    check: bool = True
    """Check the cheap invariants on every sample: a single BOS at 0, each trained span's text equal
    to :func:`assistant_body` + ``<|eot_id|>``, at least one trained token. The expensive checks
    (whole-text ids and labels, decoded labels, inference-prompt prefix parity) are the audit of
    :mod:`data_recipes.checks`."""

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
    fallback: bool = False
    """Encoded whole with offsets because a span edge was not provably safe to cut at."""

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
    """Render many conversations at once (one batched tokenizer call). ``expand`` is not applied here."""
    policy = replace(options, history="last") if options.history == "expand" else options
    results: list[RenderedSample | SampleError | None] = [None] * len(convs)
    segmenter = segmenter_for(tokenizer)
    cut, whole = [], []
    for slot, conv in enumerate(convs):
        try:
            text, spans = render_text(conv, policy)
        except SampleError as err:
            results[slot] = err
            continue
        plan = segmenter.plan(text, spans) if segmenter is not None else None
        (whole if plan is None else cut).append((slot, conv, text, spans, plan))
    if cut:
        encoded = segmenter.encode([t for _, _, t, _, _ in cut], [p for *_, p in cut])
        for (slot, conv, text, spans, _), (ids, labels) in zip(cut, encoded, strict=True):
            results[slot] = RenderedSample(ids, labels, text, conv.origin, spans)
    if whole:
        encoded = exact_encode([t for _, _, t, _, _ in whole], tokenizer)
        for (slot, conv, text, spans, _), (ids, offsets) in zip(whole, encoded, strict=True):
            results[slot] = exact_sample(ids, offsets, conv, text, spans)
    if options.check:
        for slot, conv in enumerate(convs):
            if isinstance(sample := results[slot], RenderedSample):
                results[slot] = basic_check(sample, conv, policy) or sample
    return results  # type: ignore[return-value]


def exact_encode(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list]]:
    """``(ids, offsets)`` of each whole text: the reference the segmented encoding must equal."""
    encodings = off_main_thread(
        tokenizer.backend_tokenizer.encode_batch, list(texts), add_special_tokens=False
    )
    return [(enc.ids, enc.offsets) for enc in encodings]


def exact_sample(ids, offsets, conv: Conversation, text: str, spans) -> RenderedSample | SampleError:
    """The slow path: the whole text's ids, labelled by their offsets (a token across an edge: dropped)."""
    try:
        return RenderedSample(
            ids, label_tokens(ids, offsets, spans, conv.origin), text, conv.origin, spans, True
        )
    except SampleError as err:
        return err


def basic_check(sample: RenderedSample, conv: Conversation, options: RenderOptions) -> SampleError | None:
    """The cheap per-sample invariants (see :attr:`RenderOptions.check`), or None when they hold."""
    ids, origin = sample.input_ids, conv.origin
    n_bos = ids.count(BOS_ID)
    if not ids or ids[0] != BOS_ID or n_bos != 1:
        return SampleError("bos_invariant", f"expected one BOS at position 0, found {n_bos}", origin)
    if len(sample.labels) == sample.labels.count(IGNORE_INDEX):
        return SampleError("no_trained_tokens", "no assistant token is trained", origin)
    got = [sample.text[a:b] for a, b in sample.spans]
    expected = [assistant_body(conv.messages[i]) + EOT for i in trained_turns(conv, options)]
    if got != expected:
        return SampleError("trained_span_mismatch", f"trained spans {got!r} != {expected!r}", origin)
    return None


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


def trained_runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` token ranges of consecutive trained labels, in order.

    After rendering, run ``k`` is trained turn ``trained_turns(conv, options)[k]`` (turns are
    separated by masked headers, so two turns never share a run).
    """
    trained = np.fromiter(labels, dtype=np.int64, count=len(labels)) != IGNORE_INDEX
    edges = np.diff(np.concatenate(([False], trained, [False])).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))
