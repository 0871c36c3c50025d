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

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

from data_recipes.messages import Conversation, Message, SampleError, to_template_messages
from data_recipes.tokenizer import BOS, BOS_ID, EOT, chat_template_text

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
        return sum(label != IGNORE_INDEX for label in self.labels)


def template_kwargs(options: RenderOptions) -> dict:
    """The chat-template variables that reproduce this policy with ``apply_chat_template``."""
    keep = options.history == "keep"
    return {"thinking": options.thinking, "keep_cots": keep, "last_reply_only": not keep}


def render_text(
    conv: Conversation, options: RenderOptions, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The template's rendering of ``conv`` and its generation (trained) character spans."""
    try:
        rendered, indices = render_jinja_template(
            conversations=[to_template_messages(conv)],
            tools=list(conv.tools) or None,
            chat_template=chat_template_text(),
            return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
            bos_token=BOS,
            **template_kwargs(options),
        )
    except TemplateError as err:
        raise SampleError("template_error", str(err), conv.origin) from err
    return rendered[0], [tuple(span) for span in indices[0]]


def label_tokens(
    input_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    origin: str,
) -> list[int]:
    """Labels for tokens whose character range lies inside a span; a token across a span edge is an error."""
    labels = [IGNORE_INDEX] * len(input_ids)
    k = 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        if k == len(spans) or end <= spans[k][0] or start == end:
            continue
        if start < spans[k][0] or end > spans[k][1]:
            raise SampleError("span_boundary_in_token", f"token {i} crosses a trained-span edge", origin)
        labels[i] = input_ids[i]
    return labels


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
    results: list[RenderedSample | SampleError] = []
    texts: list[str] = []
    pending: list[tuple[int, Conversation, list[tuple[int, int]]]] = []
    for conv in convs:
        try:
            text, spans = render_text(conv, policy)
        except SampleError as err:
            results.append(err)
            continue
        pending.append((len(results), conv, spans))
        results.append(None)  # type: ignore[arg-type]
        texts.append(text)
    if texts:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for j, (slot, conv, spans) in enumerate(pending):
        try:
            ids = enc["input_ids"][j]
            labels = label_tokens(ids, enc["offset_mapping"][j], spans, conv.origin)
            sample = RenderedSample(ids, labels, texts[j], conv.origin, spans)
            if options.check:
                check_invariants(sample, conv, tokenizer, policy)
            results[slot] = sample
        except SampleError as err:
            results[slot] = err
    return results


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
    """Raise :class:`SampleError` unless every sample invariant holds.

    The ids come from tokenizing the whole rendered text once, and :func:`label_tokens` has already
    refused tokens that straddle a span edge, so "tokenizing the whole text gives the renderer's ids"
    holds by construction; the checks below cover the rest.
    """
    ids, origin = sample.input_ids, conv.origin
    if not ids or ids[0] != BOS_ID or ids.count(BOS_ID) != 1:
        raise SampleError(
            "bos_invariant",
            f"expected one <|begin_of_text|> at position 0, found {ids.count(BOS_ID)}",
            origin,
        )
    runs = _trained_runs(sample.labels)
    if not runs:
        raise SampleError("no_trained_tokens", "no assistant token is trained", origin)
    turns = trained_turns(conv, options)
    expected = [assistant_body(conv.messages[i]) + EOT for i in turns]
    decoded = [tokenizer.decode(ids[a:b], skip_special_tokens=False) for a, b in runs]
    if decoded != expected:
        raise SampleError(
            "trained_span_mismatch", f"decoded trained spans {decoded!r} != {expected!r}", origin
        )
    history = [replace(conv, messages=conv.messages[:i]) for i in turns]
    prompts = [render_text(h, options, add_generation_prompt=True)[0] for h in history]
    for turn, prompt_ids in zip(
        turns, tokenizer(prompts, add_special_tokens=False)["input_ids"], strict=True
    ):
        if ids[: len(prompt_ids)] != prompt_ids:
            raise SampleError(
                "prefix_mismatch", f"the inference prompt for message {turn} is not a token prefix", origin
            )


def trained_runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` token ranges of consecutive trained labels, in order.

    After rendering, run ``k`` is trained turn ``trained_turns(conv, options)[k]`` (turns are
    separated by masked headers, so two turns never share a run).
    """
    return _trained_runs(labels)


def _trained_runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs
