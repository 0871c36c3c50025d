"""Golden renders of the chat template (strings), through the same engine apply_chat_template uses."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from data_recipes.messages import conversation_from_openai
from data_recipes.render import RenderOptions, render_text
from data_recipes.tokenizer import chat_template_text

BOS, SH, EH, EOT = "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
DEFAULT = "You are Hermes, created by Nous Research."
THINKING = (
    "You are a deep thinking AI, you may use extremely long chains of thought to deeply consider the problem "
    "and deliberate with yourself via systematic reasoning processes to help come to a correct solution prior "
    "to answering. You should enclose your thoughts and internal monologue inside <think> </think> tags, and "
    "then provide your solution or response to the problem."
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def text(row, add_generation_prompt=False, **opts):
    return render_text(conversation_from_openai(row), RenderOptions(**opts), add_generation_prompt)[0]


def sys_turn(body):
    return f"{BOS}{SH}system{EH}\n\n{body}{EOT}"


def user(body):
    return f"{SH}user{EH}\n\n{body}{EOT}"


def asst(body):
    return f"{SH}assistant{EH}\n{body}{EOT}"


HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_default_system_prompt_single_bos_and_header_newlines():
    assert text({"messages": HI}) == sys_turn(DEFAULT) + user("Hi") + asst("Hello!")
    assert "Cutting Knowledge" not in chat_template_text() and "strftime" not in chat_template_text()


def test_thinking_prompt_and_how_it_combines_with_a_user_system_message():
    assert text({"messages": HI}, thinking=True).startswith(sys_turn(THINKING))
    own = [{"role": "system", "content": "Be brief."}, *HI]
    assert text({"messages": own}).startswith(sys_turn("Be brief.") + user("Hi"))
    assert text({"messages": own}, thinking=True).startswith(sys_turn(f"{THINKING}\n\nBe brief."))


def test_reasoning_block_and_generation_prompt():
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "reasoning": "Add.", "content": "4"},
        ]
    }
    assert text(row).endswith(asst("<think>\nAdd.\n</think>\n4"))
    history = replace(conversation_from_openai(row), messages=conversation_from_openai(row).messages[:1])
    prompt = render_text(history, RenderOptions(), add_generation_prompt=True)[0]
    assert prompt == sys_turn(DEFAULT) + user("2+2?") + f"{SH}assistant{EH}\n"
    assert text(row).startswith(prompt)


def test_inline_reasoning_equals_field_reasoning():
    inline = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\na"},
        ]
    }
    field = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "reasoning_content": "r", "content": "a"},
        ]
    }
    assert text(inline) == text(field)


def test_tools_prompt_tool_calls_and_grouped_tool_results():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    row = {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "tool_calls": [
                    call,
                    {**call, "function": {**call["function"], "arguments": {"city": "Rome"}}},
                ],
            },
            {"role": "tool", "content": '{"temp": 20}'},
            {"role": "tool", "content": '{"temp": 25}'},
            {"role": "assistant", "content": "Paris 20, Rome 25."},
        ],
    }
    out = text(row)
    system = out[: out.index(EOT) + len(EOT)]
    assert f"<tools>\n{json.dumps(WEATHER_TOOL)}\n</tools>" in system
    assert system.startswith(sys_turn(DEFAULT)[: -len(EOT)] + "\n\nYou have access to the functions")
    calls = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    responses = f'{SH}tool{EH}\n\n<tool_response>\n{{"temp": 20}}\n</tool_response>\n<tool_response>\n{{"temp": 25}}\n</tool_response>{EOT}'
    assert out.endswith(
        user("Weather in Paris and Rome?") + asst(calls) + responses + asst("Paris 20, Rome 25.")
    )


@pytest.mark.parametrize(
    "arguments",
    [{"city": "Paris", "n": [1, 2]}, '{"city": "Paris", "n": [1, 2]}', '{"city":"Paris","n":[1,2]}'],
)
def test_arguments_dict_or_json_string_render_identically(arguments):
    row = {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": arguments}}],
            },
        ],
    }
    assert text(row).endswith(
        asst(
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2]}}\n</tool_call>'
        )
    )
    assert '\\"' not in text(row), "arguments were double-encoded"


MULTI = {
    "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "reasoning_content": "r1", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "reasoning_content": "r2", "content": "d"},
    ]
}


def test_history_reasoning_is_stripped_unless_keep_cots_and_never_empty():
    last = text(MULTI)
    assert asst("b") in last and "r1" not in last and asst("<think>\nr2\n</think>\nd") in last
    keep = text(MULTI, history="keep")
    assert asst("<think>\nr1\n</think>\nb") in keep
    for out in (last, keep, text(MULTI, history="expand")):
        assert (
            "<think></think>" not in out
            and "<think>\n\n</think>" not in out
            and "<think> </think>\n" not in out
        )


def test_apply_chat_template_strips_inline_history_reasoning(tokenizer):
    # What a server sends back as history: content with inline reasoning. Earlier turns lose it.
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nr1\n</think>\nb"},
        {"role": "user", "content": "c"},
    ]
    out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out.endswith(user("a") + asst("b") + user("c") + f"{SH}assistant{EH}\n")
    kept = tokenizer.apply_chat_template(msgs, tokenize=False, keep_cots=True)
    assert asst("<think>\nr1\n</think>\nb") in kept


def test_unknown_role_raises_in_the_template(tokenizer):
    with pytest.raises(Exception, match="Unknown role 'robot'"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)
