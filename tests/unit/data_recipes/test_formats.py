"""Format normalizers: OpenAI, ShareGPT, Hermes function-calling, and per-row detection.

Golden renders pin the exact text and a few real Llama-3.1 ids, so a normalizer that drops, reorders
or double-encodes anything fails here.
"""

from __future__ import annotations

import json

import pytest

from data_recipes.formats.detect import detect_format, to_conversation
from data_recipes.messages import SampleError, ToolCall
from data_recipes.render import RenderOptions, render

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
SYS_TOOLS = (
    "You are a function calling AI model.\n<tools>\n" + json.dumps([WEATHER]) + "\n</tools>\nUse <tool_call>."
)
ASSISTANT_HEADER = [128006, 78191, 128007, 198]  # <|start_header_id|>assistant<|end_header_id|>\n


def conv(row, fmt="auto"):
    return to_conversation(row, fmt, "t:1")[1]


def test_detect_per_row():
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"conversations": [{"from": "human", "value": "hi"}]}) == "sharegpt"
    assert detect_format({"conversations": [{"from": "system", "value": SYS_TOOLS}]}) == "hermes_fc"
    with pytest.raises(SampleError) as err:
        detect_format({"prompt": "x"}, "f.jsonl:3")
    assert err.value.reason == "no_messages" and err.value.origin == "f.jsonl:3"
    with pytest.raises(SampleError) as err:
        to_conversation({"conversations": []}, "openai", "f:1")
    assert err.value.reason == "no_messages"


def test_openai_string_and_dict_arguments_render_identically(tokenizer):
    def row(args, tools):
        return {
            "tools": tools,
            "messages": [
                {"role": "user", "content": "Oslo?"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "get_weather", "arguments": args}}],
                },
                {"role": "tool", "tool_call_id": "a", "name": "get_weather", "content": "7"},
                {"role": "assistant", "content": "7 degrees."},
            ],
        }

    fmt, as_str = to_conversation(row('{"city": "Oslo"}', json.dumps([WEATHER])), "auto", "t:1")
    _, as_dict = to_conversation(row({"city": "Oslo"}, [WEATHER]), "auto", "t:2")
    assert fmt == "openai"
    assert as_str.messages[1].tool_calls == (ToolCall("get_weather", {"city": "Oslo"}, "a"),)
    a, b = render(as_str, tokenizer, RenderOptions()), render(as_dict, tokenizer, RenderOptions())
    assert a.input_ids == b.input_ids and a.labels == b.labels
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in a.text


def test_openai_reasoning_field_alias():
    c = conv(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "reasoning": " r ", "content": "a"},
            ]
        }
    )
    assert c.messages[1].reasoning == "r" and c.messages[1].content == "a"


def test_sharegpt_golden_render(tokenizer):
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Capital of Peru?"},
            {"from": "gpt", "value": "<think>\nPeru's capital is Lima.\n</think>\nLima."},
        ]
    }
    fmt, c = to_conversation(row, "auto", "s:1")
    assert fmt == "sharegpt"
    s = render(c, tokenizer, RenderOptions())
    assert s.text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of Peru?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n<think>\nPeru's capital is Lima.\n</think>\nLima.<|eot_id|>"
    )
    first = s.labels.index(next(x for x in s.labels if x != -100))
    assert s.input_ids[first - 4 : first] == ASSISTANT_HEADER
    assert s.input_ids[first] == 128013 and s.input_ids[-1] == 128009 and s.labels[-1] == 128009
    assert tokenizer.decode([t for t in s.labels if t != -100]) == (
        "<think>\nPeru's capital is Lima.\n</think>\nLima.<|eot_id|>"
    )


def test_sharegpt_function_call_and_observation_merge():
    row = {
        "tools": json.dumps([WEATHER]),
        "conversations": [
            {"from": "human", "value": "Oslo?"},
            {"from": "gpt", "value": "Let me check."},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}}),
            },
            {"from": "observation", "value": "7"},
            {"from": "gpt", "value": "7 degrees."},
        ],
    }
    c = conv(row, "sharegpt")
    assert [m.role for m in c.messages] == ["user", "assistant", "tool", "assistant"]
    assert c.messages[1].content == "Let me check."
    assert c.messages[1].tool_calls == (ToolCall("get_weather", {"city": "Oslo"}),)
    assert c.tools[0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([{"from": "robot", "value": "x"}], "unknown_role"),
        ([{"from": "human", "value": 3}], "non_string_content"),
        ([], "empty_conversation"),
        ([{"from": "human", "value": "q"}, {"from": "function_call", "value": "{nope"}], "bad_tool_call"),
    ],
)
def test_sharegpt_errors(turns, reason):
    with pytest.raises(SampleError) as err:
        conv({"conversations": turns}, "sharegpt")
    assert err.value.reason == reason and err.value.origin == "t:1"


def test_hermes_fc_golden(tokenizer):
    python_literal_tools = SYS_TOOLS.replace(json.dumps([WEATHER]), repr([WEATHER]))
    row = {
        "conversations": [
            {"from": "system", "value": python_literal_tools},
            {"from": "human", "value": "Oslo and Lima?"},
            {"from": "gpt", "value": "<think>\nTwo cities.\n</think>\n<tool_call>\n{'arguments': {'city': 'Oslo'}, 'name': 'get_weather'}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lima\"}}\n</tool_call>"},
            {"from": "tool", "value": "<tool_response>\n7\n</tool_response>\n<tool_response>\n22\n</tool_response>"},
            {"from": "gpt", "value": "Oslo 7, Lima 22."},
        ]
    }  # fmt: skip
    fmt, c = to_conversation(row, "auto", "h:1")
    assert fmt == "hermes_fc"
    # the system turn is all tool protocol (the template writes its own): no system message is left
    assert [m.role for m in c.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert c.tools == ({"type": "function", "function": WEATHER["function"]},)
    assert c.messages[1].reasoning == "Two cities." and c.messages[1].content == ""
    assert [call.arguments for call in c.messages[1].tool_calls] == [{"city": "Oslo"}, {"city": "Lima"}]
    assert [m.content for m in c.messages[2:4]] == ["7", "22"]
    s = render(c, tokenizer, RenderOptions())
    trained = tokenizer.decode([t for t in s.labels if t != -100])
    assert trained == (
        '<think>\nTwo cities.\n</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call><|eot_id|>'
        "Oslo 7, Lima 22.<|eot_id|>"
    )
    assert "<tool_response>\n7\n</tool_response>\n<tool_response>\n22\n</tool_response><|eot_id|>" in s.text


def test_hermes_fc_interleaved_calls_stay_in_reasoning():
    inner = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_response>\n7\n</tool_response>'
    row = {"conversations": [
        {"from": "system", "value": SYS_TOOLS}, {"from": "human", "value": "Coat?"},
        {"from": "gpt", "value": f"<think>\nCheck.\n{inner}\nCold.\n</think>\nYes."}]}  # fmt: skip
    c = conv(row)
    assert c.messages[-1].reasoning == f"Check.\n{inner}\nCold." and c.messages[-1].tool_calls == ()


def test_hermes_fc_system_without_tools_is_kept_and_bad_markup_fails():
    c = conv({"conversations": [{"from": "system", "value": "Persona."}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"}]},
             "hermes_fc")  # fmt: skip
    assert c.messages[0].content == "Persona."
    with pytest.raises(SampleError) as err:
        conv(
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "<tool_call>\n{oops\n</tool_call>"},
                ]
            }
        )
    assert err.value.reason == "bad_tool_call"
    with pytest.raises(SampleError) as err:
        conv({"conversations": [{"from": "system", "value": "<tools>\n{not: [valid\n</tools>"}]})
    assert err.value.reason == "bad_tools"
