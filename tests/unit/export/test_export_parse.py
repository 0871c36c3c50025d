"""The output parser follows vLLM's ``hermes`` tool parser and ``qwen3`` reasoning parser (golden strings)."""

from __future__ import annotations

import json

import pytest

from train.export.verify.report import ParsedToolCall, parse_output, parse_reasoning, parse_tool_calls


def test_plain_text_has_no_calls():
    r = parse_tool_calls("Hello there.")
    assert (r.tools_called, r.tool_calls, r.content) == (False, [], "Hello there.")


def test_one_call_with_newlines_and_content_before():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    r = parse_tool_calls(text)
    assert r.tools_called
    assert r.tool_calls == [ParsedToolCall("get_weather", '{"city": "Paris"}')]
    assert r.content == "Let me check.\n"


def test_several_calls_and_no_content():
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"x": [1, 2], "s": "é"}}\n</tool_call>'
    )
    r = parse_tool_calls(text)
    assert [c.name for c in r.tool_calls] == ["a", "b"]
    assert json.loads(r.tool_calls[1].arguments) == {"x": [1, 2], "s": "é"}
    assert "é" in r.tool_calls[1].arguments  # ensure_ascii=False, as vLLM
    assert r.content is None


def test_unterminated_final_call_is_parsed():
    r = parse_tool_calls('<tool_call>{"name": "a", "arguments": {"k": 1}}')
    assert r.tools_called and r.tool_calls == [ParsedToolCall("a", '{"k": 1}')]


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "a"}',  # no arguments
        '{"arguments": {}}',  # no name
        "{not json}",
        '"just a string"',
    ],
)
def test_any_bad_call_makes_everything_content(body):
    text = f"pre <tool_call>{body}</tool_call>"
    r = parse_tool_calls(text)
    assert (r.tools_called, r.tool_calls, r.content) == (False, [], text)
    assert r.error


def test_reasoning_split():
    assert parse_reasoning("<think>\nhmm\n</think>\nAnswer") == ("\nhmm\n", "\nAnswer")
    assert parse_reasoning("hmm</think>Answer") == ("hmm", "Answer")  # opening tag in the prompt
    assert parse_reasoning("<think>unfinished") == (None, "<think>unfinished")
    assert parse_reasoning("no tags") == (None, "no tags")
    assert parse_reasoning("<think>all</think>") == ("all", None)


def test_reasoning_then_tool_call():
    text = (
        '<think>\nneed weather\n</think>\n<tool_call>\n{"name": "w", "arguments": {"c": "P"}}\n</tool_call>'
    )
    out = parse_output(text)
    assert out.reasoning == "\nneed weather\n"
    assert out.content == "\n"
    assert out.tool_calls == [ParsedToolCall("w", '{"c": "P"}')]


def test_reasoning_then_bad_call_keeps_content():
    out = parse_output("<think>x</think>answer <tool_call>{oops")
    assert out.reasoning == "x" and out.content == "answer <tool_call>{oops" and out.tool_calls == []
    assert out.tool_error


def test_template_rendering_parses_back(tokenizer):
    """What the template renders for a tool call is what the parser reads back."""
    from data_recipes.messages import conversation_from_openai
    from data_recipes.render import RenderOptions, assistant_body, render
    from train.export.verify.folder import CONVERSATIONS

    _, row, _ = CONVERSATIONS[3]
    conv = conversation_from_openai(row)
    call_turn = conv.messages[1]
    text = assistant_body(call_turn)
    assert text in render(conv, tokenizer, RenderOptions()).text
    out = parse_output(text)
    assert out.tool_calls == [ParsedToolCall("get_weather", '{"city": "Paris", "unit": "c"}')]
