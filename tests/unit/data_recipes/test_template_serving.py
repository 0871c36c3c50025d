"""The template's serving-side rules: ``enable_thinking`` is an alias of ``thinking``; assistant
reasoning and content are trimmed (whitespace is not information), from every field a server echoes
back; training renders of well-formed data are unchanged by that rule."""

from __future__ import annotations

import json

import pytest

from data_recipes.messages import conversation_from_openai, to_template_messages
from data_recipes.render import RenderOptions, render, template_kwargs
from train.cli import main

ASK = {"role": "user", "content": "Is 91 prime?"}
CALL = {"type": "function", "function": {"name": "f", "arguments": {"n": 91}}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(tokenizer, messages, **kw):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def test_enable_thinking_is_an_alias_of_thinking(tokenizer):
    msgs = [ASK, {"role": "assistant", "content": "No."}]
    on = chat(tokenizer, msgs, thinking=True)
    assert "You are a deep thinking AI" in on
    assert chat(tokenizer, msgs, enable_thinking=True) == on
    assert chat(tokenizer, msgs, thinking=True, enable_thinking=True) == on
    off = chat(tokenizer, msgs)
    assert chat(tokenizer, msgs, enable_thinking=False) == off == chat(tokenizer, msgs, thinking=False)
    ids = tokenizer.apply_chat_template(msgs, enable_thinking=True, return_dict=True)["input_ids"]
    assert ids == tokenizer.apply_chat_template(msgs, thinking=True, return_dict=True)["input_ids"]


def test_thinking_and_enable_thinking_that_disagree_are_an_error(tokenizer):
    with pytest.raises(Exception, match="thinking and enable_thinking disagree"):
        chat(tokenizer, [ASK], thinking=True, enable_thinking=False)


def test_render_cli_accepts_enable_thinking(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [ASK, {"role": "assistant", "content": "No."}]}) + "\n")
    outputs = []
    for flag in ("--thinking", "--enable-thinking"):
        assert main(["render", str(src), flag]) == 0
        outputs.append(json.loads(capsys.readouterr().out.splitlines()[0]))
    assert outputs[0] == outputs[1] and "You are a deep thinking AI" in outputs[0]["text"]


PADDED = [
    # what servers echo back: reasoning and content with the newlines the parsers keep
    {"role": "assistant", "reasoning_content": "\n91 = 7 x 13.\n", "content": "\nNo.\n"},
    {"role": "assistant", "reasoning": "\n91 = 7 x 13.\n", "content": "\nNo."},  # vLLM >= 0.10 field
    {"role": "assistant", "content": "<think>\n91 = 7 x 13.\n</think>\nNo."},  # no reasoning parser
    {"role": "assistant", "content": "  <think>  91 = 7 x 13.  </think>  \n\nNo.  "},
    {"role": "assistant", "content": "91 = 7 x 13.</think>\nNo."},  # reasoning without its opening tag
]


@pytest.mark.parametrize("echoed", PADDED)
def test_every_echo_of_a_reply_renders_the_generated_bytes(tokenizer, echoed):
    want = chat(
        tokenizer, [ASK, {"role": "assistant", "reasoning_content": "91 = 7 x 13.", "content": "No."}]
    )
    assert want.endswith("<|end_header_id|>\n<think>\n91 = 7 x 13.\n</think>\nNo.<|eot_id|>")
    assert chat(tokenizer, [ASK, echoed]) == want


def test_calls_after_padded_content_and_with_padded_reasoning(tokenizer):
    echoed = {"role": "assistant", "reasoning_content": "\nCheck.\n", "content": "\n", "tool_calls": [CALL]}
    out = chat(tokenizer, [ASK, echoed], tools=[TOOL])
    assert out.endswith(
        '<think>\nCheck.\n</think>\n<tool_call>\n{"name": "f", "arguments": {"n": 91}}\n</tool_call><|eot_id|>'
    )
    before = {"role": "assistant", "content": "Let me check.\n", "tool_calls": [CALL, CALL]}
    block = '<tool_call>\n{"name": "f", "arguments": {"n": 91}}\n</tool_call>'
    out = chat(tokenizer, [ASK, before], tools=[TOOL])
    assert out.endswith(f"<|end_header_id|>\nLet me check.\n{block}\n{block}<|eot_id|>")


def test_whitespace_only_reasoning_renders_no_empty_think_block(tokenizer):
    out = chat(tokenizer, [ASK, {"role": "assistant", "reasoning_content": " \n ", "content": "No."}])
    assert out.endswith("<|end_header_id|>\nNo.<|eot_id|>") and "<think>" not in out.split("<|eot_id|>")[-2]


def test_training_render_of_raw_padded_data_equals_the_trimmed_data(tokenizer):
    """The renderer inherits the template's rule: raw rows with padding render to the same ids and
    labels as their trimmed form, and apply_chat_template of the raw messages agrees."""
    raw = {"messages": [ASK, {"role": "assistant", "reasoning_content": "\n\nr\n", "content": "\n a \n"}]}
    trimmed = {"messages": [ASK, {"role": "assistant", "reasoning_content": "r", "content": "a"}]}
    options = RenderOptions(thinking=True)
    a = render(conversation_from_openai(raw), tokenizer, options)
    b = render(conversation_from_openai(trimmed), tokenizer, options)
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    direct = tokenizer.apply_chat_template(raw["messages"], return_dict=True, **template_kwargs(options))
    assert direct["input_ids"] == a.input_ids
    assert to_template_messages(conversation_from_openai(raw))[1]["content"] == "a"
