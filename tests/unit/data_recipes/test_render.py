"""Renderer: golden ids and labels, history policies, parity with apply_chat_template's assistant mask."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from data_recipes.checks import _prompt_tail, check_invariants
from data_recipes.messages import SampleError, conversation_from_openai, to_template_messages
from data_recipes.render import (
    IGNORE_INDEX,
    RenderedSample,
    RenderOptions,
    expand_history,
    render,
    render_all,
)

PLAIN = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
REASONING = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "reasoning_content": "Add.", "content": "4"},
    ]
}
TOOL = {
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
        },
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "Done"},
    ],
}
MULTI = {
    "messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "reasoning_content": "r", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "reasoning_content": "s", "content": "d"},
    ]
}


def run(row, tokenizer, **opts):
    return render(conversation_from_openai(row), tokenizer, RenderOptions(**opts))


def trained_positions(sample):
    return [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]


def test_golden_plain(tokenizer):
    s = run(PLAIN, tokenizer)
    assert s.input_ids == [
        128000, 128006, 9125, 128007, 271, 2675, 527, 95063, 11, 3549, 555, 48109, 8483, 13, 128009,
        128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 198, 9906, 0, 128009,
    ]  # fmt: skip
    assert trained_positions(s) == [25, 26, 27]  # "Hello", "!", <|eot_id|>
    assert all(s.labels[i] == s.input_ids[i] for i in trained_positions(s))


def test_golden_reasoning(tokenizer):
    s = run(REASONING, tokenizer)
    assert s.input_ids == [
        128000, 128006, 9125, 128007, 271, 3513, 10015, 13, 128009, 128006, 882, 128007, 271, 17, 10, 17, 30,
        128009, 128006, 78191, 128007, 198, 128013, 198, 2261, 627, 128014, 198, 19, 128009,
    ]  # fmt: skip
    assert trained_positions(s) == list(range(22, 30))  # <think> … </think>\n4<|eot_id|>; header "\n" masked


def test_golden_tool_calling(tokenizer):
    s = run(TOOL, tokenizer)
    user_on = s.input_ids.index(882) - 1
    assert s.input_ids[user_on:] == [
        128006, 882, 128007, 271, 11087, 128009,
        128006, 78191, 128007, 198, 128015, 198, 5018, 609, 794, 330, 69, 498, 330, 16774, 794, 5324, 87, 794, 220,
        16, 11498, 128016, 128009,
        128006, 14506, 128007, 271, 128017, 198, 564, 198, 128018, 128009,
        128006, 78191, 128007, 198, 17911, 128009,
    ]  # fmt: skip
    trained = [s.input_ids[i] for i in trained_positions(s)]
    assert trained == [128015, 198, 5018, 609, 794, 330, 69, 498, 330, 16774, 794, 5324, 87, 794, 220, 16, 11498,
                       128016, 128009, 17911, 128009]  # fmt: skip
    assert 128017 not in trained, "tool results must be masked"


def test_golden_multi_turn_last_policy(tokenizer):
    s = run(MULTI, tokenizer)
    assert s.input_ids == [
        128000, 128006, 9125, 128007, 271, 50, 128009, 128006, 882, 128007, 271, 64, 128009,
        128006, 78191, 128007, 198, 65, 128009, 128006, 882, 128007, 271, 66, 128009,
        128006, 78191, 128007, 198, 128013, 198, 82, 198, 128014, 198, 67, 128009,
    ]  # fmt: skip
    assert trained_positions(s) == list(range(29, 37))


def test_history_policies(tokenizer, trained_texts):
    conv = conversation_from_openai(MULTI)
    keep = render(conv, tokenizer, RenderOptions(history="keep"))
    assert trained_texts(keep) == [
        "<think>\nr\n</think>\nb<|eot_id|>",
        "<think>\ns\n</think>\nd<|eot_id|>",
    ]
    expanded = render_all(conv, tokenizer, RenderOptions(history="expand"))
    assert [trained_texts(s) for s in expanded] == [
        ["<think>\nr\n</think>\nb<|eot_id|>"],
        ["<think>\ns\n</think>\nd<|eot_id|>"],
    ]
    # The second expanded sample's history is the inference-time one: reasoning of turn 1 stripped.
    assert "<think>\nr\n" not in expanded[1].text
    assert expanded[1].input_ids == render(conv, tokenizer, RenderOptions()).input_ids


def test_tool_reply_is_one_trained_reply_under_last(tokenizer, trained_texts):
    s = run(TOOL, tokenizer)
    assert trained_texts(s) == [
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|eot_id|>',
        "Done<|eot_id|>",
    ]
    assert len(expand_history(conversation_from_openai(TOOL))) == 1


SHOWCASE_ROWS = [PLAIN, REASONING, TOOL, MULTI]


@pytest.mark.parametrize("history", ["last", "keep"])
@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("row", SHOWCASE_ROWS, ids=["plain", "reasoning", "tool", "multi"])
def test_apply_chat_template_reproduces_ids_and_mask(tokenizer, row, thinking, history):
    """TRL's assistant_only_loss path (return_assistant_tokens_mask) gives exactly our labels."""
    s = run(row, tokenizer, thinking=thinking, history=history)
    conv = conversation_from_openai(row)
    out = tokenizer.apply_chat_template(
        to_template_messages(conv),
        tools=list(conv.tools) or None,
        return_dict=True,
        return_assistant_tokens_mask=True,
        thinking=thinking,
        keep_cots=history == "keep",
        last_reply_only=history != "keep",
    )
    assert out["input_ids"] == s.input_ids
    assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in s.labels]


def test_string_arguments_round_trip_through_raw_openai_messages(tokenizer):
    """A raw OpenAI row (arguments as a JSON string) through apply_chat_template renders like our dict form."""
    raw = json.loads(json.dumps(TOOL))
    raw["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"x": 1}'
    ids = tokenizer.apply_chat_template(raw["messages"], tools=raw["tools"], tokenize=True, return_dict=False)
    assert ids == run(TOOL, tokenizer).input_ids


def test_template_default_marks_every_turn_rendered_as_generated(tokenizer):
    """Plain apply_chat_template / TRL default: history turns are trained unless their reasoning was
    stripped (training a stripped turn would teach answering without thinking)."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "plain history"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "reasoning_content": "hidden", "content": "stripped history"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "reasoning_content": "shown", "content": "final"},
    ]
    out = tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert trained == "plain history<|eot_id|><think>\nshown\n</think>\nfinal<|eot_id|>"
    only_last = tokenizer.apply_chat_template(
        msgs, return_dict=True, return_assistant_tokens_mask=True, last_reply_only=True
    )
    assert tokenizer.decode([t for t, m in zip(ids, only_last["assistant_masks"], strict=True) if m]) == (
        "<think>\nshown\n</think>\nfinal<|eot_id|>"
    )


def _tampered(tokenizer, row, **edits):
    conv = conversation_from_openai(row, "t.jsonl:1")
    sample = render(conv, tokenizer, RenderOptions())
    return conv, replace(sample, **edits)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("prompt_token", "prefix_mismatch"),
        ("ids_not_from_text", "retokenize_mismatch"),
        ("trained_token", "trained_span_mismatch"),
        ("no_bos", "bos_invariant"),
        ("nothing_trained", "label_mismatch"),  # labels that are not the ones the spans give
    ],
)
def test_invariant_checker_catches_each_violation(tokenizer, edit, reason):
    good = run(TOOL, tokenizer)
    ids, labels = list(good.input_ids), list(good.labels)
    text = good.text
    if edit == "prompt_token":  # the user turn reads "Hi", so the inference prompt (with "Go") is no prefix
        text = text.replace("user<|end_header_id|>\n\nGo", "user<|end_header_id|>\n\nHi")
        ids = tokenizer(text)["input_ids"]
    elif edit == "ids_not_from_text":
        ids[ids.index(11087)] = 11088
    elif edit == "trained_token":  # the sample says "Done"; the conversation's answer is "Finished"
        row = json.loads(json.dumps(TOOL))
        row["messages"][-1]["content"] = "Finished"
        return _expect(tokenizer, conversation_from_openai(row, "t.jsonl:1"), good, reason)
    elif edit == "no_bos":
        text = text.replace("<|begin_of_text|>", "<|end_of_text|>", 1)
        ids = tokenizer(text)["input_ids"]
    else:
        labels = [IGNORE_INDEX] * len(labels)
    conv, sample = _tampered(tokenizer, TOOL, input_ids=ids, labels=labels, text=text)
    _expect(tokenizer, conv, sample, reason)
    check_invariants(good, conv, tokenizer, RenderOptions())  # the untouched sample passes


def _expect(tokenizer, conv, sample, reason):
    with pytest.raises(SampleError) as info:
        check_invariants(sample, conv, tokenizer, RenderOptions())
    assert info.value.reason == reason


def test_prompt_tail_needs_a_string_prefix_and_a_token_boundary(tokenizer):
    text = "<|begin_of_text|>hello world"
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    sample = RenderedSample(enc.ids, [IGNORE_INDEX] * len(enc.ids), text)
    assert enc.ids == [128000, 15339, 1917]
    assert _prompt_tail(sample, enc.offsets, "<|begin_of_text|>hello") == (1, 2, "hello")
    assert _prompt_tail(sample, enc.offsets, "<|begin_of_text|>") == (1, 1, "")
    assert _prompt_tail(sample, enc.offsets, "<|begin_of_text|>hel") is None  # inside the token "hello"
    assert _prompt_tail(sample, enc.offsets, "<|begin_of_text|>help") is None  # not a string prefix
