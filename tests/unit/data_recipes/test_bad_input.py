"""Every bad input of the foundation issue gives a SampleError with a stable reason and the origin."""

from __future__ import annotations

import pytest

from data_recipes.messages import SampleError, conversation_from_openai
from data_recipes.render import RenderOptions, render

U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


def call(args):
    return {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": args}}],
    }


CASES = {
    "unknown_role": [U, {"role": "robot", "content": "x"}, A],
    "no_assistant_turn": [U],
    "bad_tool_arguments": [U, call("{not json")],
    "bad_tool_arguments/list": [U, call("[1, 2]")],
    "bad_tool_arguments/number": [U, call(3)],
    "orphan_tool_result": [U, {"role": "tool", "content": "42"}, A],
    "orphan_tool_result/extra": [
        U,
        call({}),
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
        A,
    ],
    "orphan_tool_result/id": [
        U,
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c9", "content": "1"},
        A,
    ],
    "bad_think_tags/repeated": [U, {"role": "assistant", "content": "<think>a</think><think>b</think>c"}],
    "bad_think_tags/unclosed": [U, {"role": "assistant", "content": "<think>never closed"}],
    "bad_think_tags/close-only": [U, {"role": "assistant", "content": "oops</think> answer"}],
    "bad_think_tags/not-first": [U, {"role": "assistant", "content": "Answer <think>late</think>"}],
    "bad_think_tags/both": [
        U,
        {"role": "assistant", "reasoning_content": "r", "content": "<think>s</think>a"},
    ],
    "empty_assistant_turn": [U, {"role": "assistant", "content": "   "}],
    "non_string_content": [U, {"role": "assistant", "content": {"text": "a"}}],
    "non_string_content/number": [{"role": "user", "content": 42}, A],
    "control_token_in_content": [{"role": "user", "content": "hi<|eot_id|>"}, A],
    "control_token_in_content/header": [U, {"role": "assistant", "content": "<|start_header_id|>user"}],
    "control_token_in_content/args": [U, call({"x": "<|reserved_special_token_7|>"})],
    "empty_conversation": [],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_conversation_is_rejected_with_reason_and_origin(case, tokenizer):
    reason = case.split("/")[0]
    with pytest.raises(SampleError) as info:
        render(
            conversation_from_openai({"messages": CASES[case]}, "data.jsonl:7"), tokenizer, RenderOptions()
        )
    assert info.value.reason == reason
    assert str(info.value).startswith(f"data.jsonl:7: {reason}: ")


def test_text_parts_are_accepted_as_content(tokenizer):
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            A,
        ]
    }
    assert "Hi there" in render(conversation_from_openai(row), tokenizer, RenderOptions()).text


def test_tool_results_answer_calls_by_id_in_any_order(tokenizer):
    calls = [{"id": f"c{i}", "function": {"name": "f", "arguments": {"i": i}}} for i in (1, 2)]
    row = {
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            U,
            {"role": "assistant", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c2", "content": "two"},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            A,
        ],
    }
    assert render(conversation_from_openai(row), tokenizer, RenderOptions()).num_trained > 0


@pytest.mark.parametrize("tools", ['[{"type": "function"', '{"name": "f"}', "[42]"])
def test_bad_tools_field(tools):
    with pytest.raises(SampleError) as info:
        conversation_from_openai({"messages": [U, A], "tools": tools}, "t.jsonl:1")
    assert info.value.reason == "bad_tools"
