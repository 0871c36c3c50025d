"""Segment encoding (data_recipes/segments.py) against whole-text encoding: every cut the segmenter
accepts gives exactly the whole text's ids, on random text built from the characters that matter to
the Llama-3 pre-tokenizer (newlines, other whitespace, digits, letters of several scripts, apostrophes,
punctuation, tag strings and fragments of them); refused cuts fall back to the exact path."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import PreTrainedTokenizerFast

from data_recipes.messages import Conversation, Message
from data_recipes.render import (
    IGNORE_INDEX,
    RenderOptions,
    basic_check,
    exact_encode,
    exact_sample,
    label_tokens,
    render_batch,
)
from data_recipes.segments import precondition_failure, segmenter_for

ATOMS = [
    "\n", "\n\n", "\r", "\r\n", " ", "  ", "\t", "\x0b", "\x0c", "\x85", "\u00a0", "\u2028", "\u2029",
    "\u3000", "\u200a", "\x1c", " \n", "\n ", "'", "'s", "'LL", "'t", "a", "Z", "word", " word", "é",
    "ſ", "ß", "中文", "ǅ", "🙂", "\u0301", "0", "7", "12", "1234", "٣", "½", "Ⅻ", "!", "...", "?!\n",
    "-", "_", "$", "<", ">", "|", "<|", "|>", "<think>", "</think>", "<tool_call>", "</tool_response>",
    "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_5|>", "<thin", "k>", "<think >", "<tool_call>\n", "\n</think>\n",
]  # fmt: skip
CHARS = st.characters(blacklist_categories=("Cs",))
TEXT = st.lists(st.one_of(st.sampled_from(ATOMS), st.text(CHARS, min_size=1, max_size=3)), max_size=24).map(
    "".join
)
SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


@SETTINGS
@given(text=TEXT)
@example(text="\n\n")
@example(text="<|end_header_id|>\n Hello")
@example(text="ab\n'sc")
@example(text="x\n\u00a0y")
def test_every_accepted_cut_gives_the_whole_text_ids(tokenizer, text):
    segmenter = segmenter_for(tokenizer)
    whole = encode(tokenizer, text)
    cuts = [p for p in range(1, len(text)) if segmenter.safe_cut(text, 0, p, len(text))]
    halves = tokenizer.backend_tokenizer.encode_batch_fast(
        [piece for p in cuts for piece in (text[:p], text[p:])], add_special_tokens=False
    )
    for k, p in enumerate(cuts):
        assert halves[2 * k].ids + halves[2 * k + 1].ids == whole, (text, p)


@st.composite
def text_and_spans(draw):
    text = draw(TEXT)
    edges = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    return text, list(zip(edges[::2], edges[1::2], strict=False))


@SETTINGS
@given(case=text_and_spans())
def test_a_plan_encodes_to_the_exact_ids_and_labels(tokenizer, case):
    text, spans = case
    segmenter = segmenter_for(tokenizer)
    plan = segmenter.plan(text, spans)
    if plan is None:  # a refused cut: the sample takes the exact path
        return
    ((ids, labels),) = segmenter.encode([text], [plan])
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    assert ids == enc.ids
    assert labels == label_tokens(enc.ids, enc.offsets, spans, "generated")
    assert "".join(text[a:b] for a, b, _ in plan) == text


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("\n\nHello", 1),  # "\n\n" is one token
        ("hello world", 5),  # " world" is one token
        ("\n Hello", 1),  # a reply starting with a space: refused (it happens to be safe, not provably)
        ("ab<think", 2),  # "<" that starts no added token
        ("x<|eot_id|>", 5),  # inside an added token
        ("\nhi", 2),  # inside a word
    ],
)
def test_cuts_that_no_rule_proves_are_refused(tokenizer, text, cut):
    assert not segmenter_for(tokenizer).safe_cut(text, 0, cut, len(text))


def test_the_rules_are_not_vacuous(tokenizer):
    """Refused cuts that really change the ids exist; the accepted template edges are the real ones."""
    assert encode(tokenizer, "\n") + encode(tokenizer, "\nHello") != encode(tokenizer, "\n\nHello")
    segmenter = segmenter_for(tokenizer)
    text = "<|start_header_id|>assistant<|end_header_id|>\nHello<|eot_id|>x"
    assert segmenter.safe_cut(text, 0, text.index("Hello"), len(text))  # rule B
    assert segmenter.safe_cut(text, 0, text.index("x"), len(text))  # rule A
    assert segmenter.safe_cut("\n<think>", 0, 1, 8)  # rule A: a tag starts at the cut


def conv(content: str, reasoning: str | None = None) -> Conversation:
    return Conversation((Message("user", "Hi"), Message("assistant", content, reasoning)), origin="t.jsonl:7")


def test_a_reply_with_an_unsafe_edge_takes_the_exact_path(tokenizer):
    """The template trims replies, so its edges are always safe; a text whose edge is not (a reply
    that starts with whitespace) is refused by the plan and the exact path labels it per token."""
    (sample,) = render_batch([conv("Hello")], tokenizer, RenderOptions())
    assert not sample.fallback
    start = sample.spans[0][0]
    for reply, exact in ((" Hello", True), ("\n\nHello", False)):  # "\n\n\n" is one token across the edge
        text = sample.text[:start] + reply + sample.text[start + len("Hello") :]
        spans = [(start, start + len(reply) + len("<|eot_id|>"))]
        assert segmenter_for(tokenizer).plan(text, spans) is None
        ((ids, offsets),) = exact_encode([text], tokenizer)
        out = exact_sample(ids, offsets, conv(reply), text, spans)
        if exact:
            assert out.fallback and out.input_ids == encode(tokenizer, text)
            assert out.labels == label_tokens(ids, offsets, spans, "")
            assert tokenizer.decode([i for i in out.labels if i != IGNORE_INDEX]) == " Hello<|eot_id|>"
        else:
            assert out.reason == "span_boundary_in_token"


def test_a_tokenizer_outside_the_proof_gets_no_segmenter_and_the_same_output(tokenizer):
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.normalizer = normalizers.NFC()
    other = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert precondition_failure(other) == "the tokenizer has a normalizer"
    assert segmenter_for(other) is None
    convs = [conv("Hello", "Think."), conv("Plain 12345 text\nwith lines")]
    ours = render_batch(convs, tokenizer, RenderOptions())
    theirs = render_batch(convs, other, RenderOptions())
    assert all(t.fallback and not o.fallback for o, t in zip(ours, theirs, strict=True))
    assert [(s.input_ids, s.labels) for s in ours] == [(s.input_ids, s.labels) for s in theirs]


def test_precondition_rejects_added_tokens_that_could_overlap(tokenizer):
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.add_tokens([AddedToken("a<b>", normalized=False)])
    assert "a<b>" in precondition_failure(PreTrainedTokenizerFast(tokenizer_object=backend))


def test_cheap_checks_catch_a_trained_text_that_is_not_the_assistant_body(tokenizer):
    (sample,) = render_batch([conv("Hello")], tokenizer, RenderOptions())
    assert basic_check(sample, conv("Hello"), RenderOptions()) is None
    assert basic_check(sample, conv("Goodbye"), RenderOptions()).reason == "trained_span_mismatch"
    untrained = replace(sample, labels=[IGNORE_INDEX] * len(sample.labels))
    assert basic_check(untrained, conv("Hello"), RenderOptions()).reason == "no_trained_tokens"
    no_bos = replace(sample, input_ids=sample.input_ids[1:])
    assert basic_check(no_bos, conv("Hello"), RenderOptions()).reason == "bos_invariant"


SYMBOLS = [
    "\n",
    "\r",
    " ",
    "\t",
    "\u00a0",
    "\u2028",
    "a",
    "Ab",
    "é",
    "1",
    "'",
    "s",
    "!",
    "<|eot_id|>",
    "<think>",
]


def test_every_accepted_cut_of_every_short_string_gives_the_whole_text_ids(tokenizer):
    """Exhaustive: all strings of up to 3 of the symbols that steer the regex, every accepted cut."""
    backend, segmenter = tokenizer.backend_tokenizer, segmenter_for(tokenizer)
    texts = ["".join(c) for n in (2, 3) for c in itertools.product(SYMBOLS, repeat=n)]
    encoded = backend.encode_batch_fast(texts, add_special_tokens=False)
    whole = {t: e.ids for t, e in zip(texts, encoded, strict=True)}
    cuts = [(t, p) for t in texts for p in range(1, len(t)) if segmenter.safe_cut(t, 0, p, len(t))]
    halves = backend.encode_batch_fast([x for t, p in cuts for x in (t[:p], t[p:])], add_special_tokens=False)
    assert len(cuts) > 1000
    for k, (text, p) in enumerate(cuts):
        assert halves[2 * k].ids + halves[2 * k + 1].ids == whole[text], (text, p)
