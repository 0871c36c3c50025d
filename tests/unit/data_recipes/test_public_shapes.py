"""Public dataset shapes (tests/data/public, written by hand in the published shapes): each is read the
way its publisher meant it, renders the trained text we expect, and fits the recipe docs/data.md names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_recipes.formats.detect import read_row
from data_recipes.messages import SampleError
from data_recipes.recipes import RECIPES
from data_recipes.recipes.common import RecipeOptions, apply_label_rules
from data_recipes.render import render_batch

PUBLIC = Path(__file__).resolve().parents[2] / "data" / "public"
WEATHER_FN = {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
DEFAULT_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\nYou are Hermes, created by Nous Research."


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (PUBLIC / f"{name}.jsonl").read_text().splitlines()]


def build(recipe: str, row: dict, tokenizer, fmt: str = "auto", policy: str = "last", **options):
    """The row through format → recipe → render → label rules: (read, sample, trained text)."""
    read = read_row(row, fmt, "t:1")
    prepared = RECIPES[recipe](read.conversation, RecipeOptions(**options), policy, tokenizer)
    (sample,) = render_batch([prepared.conv], tokenizer, prepared.options)
    assert not isinstance(sample, SampleError), sample
    sample = apply_label_rules(sample, prepared)
    return read, sample, tokenizer.decode([t for t in sample.labels if t != -100])


def reason(recipe: str, row: dict, tokenizer, fmt: str = "auto", **options) -> SampleError:
    with pytest.raises(SampleError) as err:
        read = read_row(row, fmt, "t:1")
        RECIPES[recipe](read.conversation, RecipeOptions(**options), "last", tokenizer)
    assert err.value.origin == "t:1"
    return err.value


# -- Hermes json-mode ------------------------------------------------------------------------------


def test_hermes_json_mode_schema_from_python_literal_in_schema_tags(tokenizer):
    (row,) = rows("hermes_json_mode")
    read, sample, trained = build("json_schema", row, tokenizer)
    assert read.format == "sharegpt"
    assert trained == '{"title": "Alien", "year": 1979}<|eot_id|>'
    assert "<schema>\n{'title': 'MovieEntry'" in sample.text  # the prompt is kept as published
    assert read.ignored == ("category", "id", "subcategory", "task")  # `schema` was read


def test_hermes_json_mode_schema_tags_in_json_and_the_schema_column(tokenizer):
    (row,) = rows("hermes_json_mode")
    schema = json.loads(row["schema"])
    system = row["conversations"][0]["value"]
    as_json = json.loads(json.dumps(row))
    as_json["conversations"][0]["value"] = system.replace(repr(schema), json.dumps(schema))
    build("json_schema", as_json, tokenizer)
    # no schema in the prompt: the row's own `schema` column is the schema
    column_only = json.loads(json.dumps(row))
    column_only["conversations"][0]["value"] = "You are a helpful assistant that answers in JSON."
    build("json_schema", column_only, tokenizer)
    column_only["conversations"][2]["value"] = '{"title": "Alien", "year": "1979"}'
    err = reason("json_schema", column_only, tokenizer)
    assert err.reason == "schema_mismatch" and "at year: '1979' is not of type 'integer'" in err.detail
    del column_only["schema"]
    err = reason("json_schema", column_only, tokenizer)
    assert err.reason == "no_schema" and "no 'schema' column" in err.detail


def test_hermes_json_mode_schema_the_answer_breaks_is_named(tokenizer):
    (row,) = rows("hermes_json_mode")
    row["conversations"][2]["value"] = '{"title": "Alien"}'
    err = reason("json_schema", row, tokenizer)
    assert err.reason == "schema_mismatch" and "'year' is a required property" in err.detail
    row["conversations"][0]["value"] = "Adhere to:\n<schema>\n{'type': 'object',\n</schema>"
    err = reason("json_schema", row, tokenizer)
    assert (
        err.reason == "invalid_schema" and "<schema> block is neither JSON nor a Python literal" in err.detail
    )


# -- Hermes function calling -----------------------------------------------------------------------


def test_hermes_extraction_keeps_task_instructions_outside_tools(tokenizer):
    (row,) = rows("hermes_extraction")
    read, sample, trained = build("tool_use", row, tokenizer)
    conv = read.conversation
    assert read.format == "hermes_fc"
    assert conv.messages[0].role == "system"
    assert conv.messages[0].content == (
        "You are an expert structured information extraction AI model. You will be provided with "
        "documents to extract information from."
    )
    assert [t["function"]["name"] for t in conv.tools] == ["ExtractPeople"]
    # the task text, then the template's own tool paragraph; none of the old protocol text
    assert sample.text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are an expert structured "
        "information extraction AI model. You will be provided with documents to extract information from."
        "\n\nYou have access to the functions"
    )
    assert "values to plug into" not in sample.text and "<args-dict>" not in sample.text
    assert trained == (
        '<tool_call>\n{"name": "ExtractPeople", "arguments": {"names": ["Ada", "Grace"]}}\n</tool_call><|eot_id|>'
    )


def test_hermes_function_calling_prompt_is_all_protocol(tokenizer):
    (row,) = rows("hermes_func_calling")
    read, sample, trained = build("tool_use", row, tokenizer)
    assert [m.role for m in read.conversation.messages] == ["user", "assistant", "tool", "assistant"]
    assert sample.text.startswith(
        "<|begin_of_text|>" + DEFAULT_SYSTEM + "\n\nYou have access to the functions"
    )
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|eot_id|>'
        "It is 7 °C in Oslo.<|eot_id|>"
    )


def test_tool_call_wrapped_in_literal_newlines(tokenizer):
    (row,) = rows("hermes_func_calling")
    row["conversations"][2]["value"] = (
        "<tool_call>\\n{'arguments': {'city': 'Oslo'}, 'name': 'get_weather'}\\n</tool_call>"
    )
    row["conversations"][3]["value"] = '<tool_response>\\n{"temp_c": 7}\\n</tool_response>'
    read, _, trained = build("tool_use", row, tokenizer)
    assert read.conversation.messages[1].tool_calls[0].arguments == {"city": "Oslo"}
    assert read.conversation.messages[2].content == '{"temp_c": 7}'
    assert trained.startswith(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )


def test_glaive_as_llama_factory_ships_it(tokenizer):
    (row,) = rows("glaive_llama_factory")
    read, _, trained = build("tool_use", row, tokenizer)
    assert read.format == "sharegpt" and read.ignored == ()
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|eot_id|>'
        "It is 7 °C in Oslo.<|eot_id|>"
    )


def test_function_call_turn_as_python_literal_or_wrapped_in_literal_newlines():
    (row,) = rows("glaive_llama_factory")
    for value in (
        "{'name': 'get_weather', 'arguments': {'city': 'Oslo'}}",
        '\\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\\n',
    ):
        row["conversations"][1]["value"] = value
        assert read_row(row).conversation.messages[1].tool_calls[0].arguments == {"city": "Oslo"}
    row["conversations"][1]["value"] = "get_weather(city='Oslo')"
    with pytest.raises(SampleError) as err:
        read_row(row, "auto", "t:1")
    assert err.value.reason == "bad_tool_call" and "neither JSON nor a Python literal" in err.value.detail


def test_tool_use_needs_a_call_in_the_trained_reply(tokenizer):
    (row,) = rows("glaive_llama_factory")
    row["conversations"] += [
        {"from": "human", "value": "Thanks!"},
        {"from": "gpt", "value": "You're welcome."},
    ]
    err = reason("tool_use", row, tokenizer)
    assert err.reason == "no_tool_call"
    assert "no tool call in the trained reply (messages [5])" in err.detail and "1 call(s)" in err.detail
    build("tool_use", row, tokenizer, policy="keep")  # keep trains the call's reply too


# -- Reasoning sets --------------------------------------------------------------------------------


def test_bespoke_stratos_and_openthoughts_system_column_and_markers(tokenizer):
    (row,) = rows("bespoke_stratos")
    read, sample, trained = build("reasoning", row, tokenizer)
    conv = read.conversation
    assert read.format == "sharegpt" and read.ignored == ()
    assert conv.messages[0].role == "system" and conv.messages[0].content == row["system"]
    assert conv.messages[2].reasoning == "Okay, 6 times 7: 6 sevens are 42."
    assert conv.messages[2].content == "6 × 7 = \\boxed{42}"
    assert trained == "<think>\nOkay, 6 times 7: 6 sevens are 42.\n</think>\n6 × 7 = \\boxed{42}<|eot_id|>"
    # the Hermes thinking prompt first, then the dataset's own system text
    assert "You are a deep thinking AI" in sample.text and row["system"] in sample.text
    assert reason("plain", row, tokenizer).reason == "unexpected_reasoning"


@pytest.mark.parametrize(
    ("content", "reasoning", "answer"),
    [
        ("<reasoning>\n2 + 2 = 4\n</reasoning>\n<answer>\n4\n</answer>", "2 + 2 = 4", "4"),  # GRPO-style
        ("<think>2 + 2 = 4</think>\n<answer>4</answer>", "2 + 2 = 4", "4"),  # DeepSeek-R1-Zero style
        ("<thinking>2 + 2 = 4</thinking>\n<output>4</output>", "2 + 2 = 4", "4"),  # Reflection style
        ("<reasoning>2 + 2 = 4</reasoning>\nSo: 4.", "2 + 2 = 4", "So: 4."),
        ("The tag <reasoning> is XML.", None, "The tag <reasoning> is XML."),  # not opening: plain text
    ],
)
def test_other_reasoning_marker_pairs(content, reasoning, answer):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}
    message = read_row(row).conversation.messages[1]
    assert (message.reasoning, message.content) == (reasoning, answer)


@pytest.mark.parametrize(
    "content",
    [
        "<|begin_of_thought|>never closed",
        "Answer first <|begin_of_thought|>x<|end_of_thought|>",
        "<|begin_of_thought|>x<|end_of_thought|> y <|end_of_solution|>",
        "<reasoning>never closed",
    ],
)
def test_broken_reasoning_markers_are_named(content):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}
    with pytest.raises(SampleError) as err:
        read_row(row, "auto", "t:1")
    assert err.value.reason == "bad_reasoning_markers"


def test_multilingual_thinking_messages_and_announced_columns(tokenizer):
    (row,) = rows("multilingual_thinking")
    read, _, trained = build("reasoning", row, tokenizer)
    assert read.format == "openai"
    assert trained == "<think>\nIl suffit d'additionner : 2 + 2 = 4.\n</think>\n4<|eot_id|>"
    assert read.ignored == ("analysis", "developer", "final", "reasoning_language", "user")


# -- System columns and turns ----------------------------------------------------------------------


def test_openhermes_empty_system_turn_is_no_system_message(tokenizer):
    (row,) = rows("openhermes")
    read, sample, _ = build("plain", row, tokenizer)
    assert [m.role for m in read.conversation.messages] == ["user", "assistant"]
    assert sample.text.startswith("<|begin_of_text|>" + DEFAULT_SYSTEM + "<|eot_id|>")
    assert read.ignored == ("skip_prompt_formatting", "source")  # null columns carry nothing


def test_toolace_tools_calls_and_results(tokenizer):
    two_calls, one_call = rows("toolace")
    read, sample, trained = build("tool_use", two_calls, tokenizer)
    conv = read.conversation
    assert read.format == "toolace" and read.ignored == ()
    # the task instructions stay; ToolACE's own call-syntax sentences go (the template describes <tool_call>)
    assert conv.messages[0].content.startswith("You are an expert in composing functions. You are given")
    assert conv.messages[0].content.endswith("also point it out.")
    assert "[func_name1(" not in sample.text and "NO other text" not in sample.text
    videos = conv.tools[0]["function"]
    assert videos["name"] == "Get Trending Videos" and videos["parameters"]["type"] == "object"
    assert videos["parameters"]["properties"]["limit"]["type"] == "integer"
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert conv.messages[3].content == '{"name": "Get Trending Videos", "results": {"videos": ["a", "b"]}}'
    assert trained == (
        '<tool_call>\n{"name": "Get Trending Videos", "arguments": {"region": "US", "limit": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "Get Trending Videos", "arguments": {"region": "JP", "limit": 2}}\n</tool_call>'
        "<|eot_id|>US: a, b. Japan: c, d.<|eot_id|>"
    )
    read, _, trained = build("tool_use", one_call, tokenizer)
    assert read.conversation.messages[0].content == "You are an expert in composing functions."
    assert trained.startswith('<tool_call>\n{"name": "newAddress", "arguments": {}}\n</tool_call><|eot_id|>')


@pytest.mark.parametrize(
    ("call", "arguments"),
    [
        ("[f(flag=true, n=None, xs=[1, 'a, b'], o={'k': (1)})]", {"flag": True, "n": None, "xs": [1, "a, b"], "o": {"k": 1}}),
        ('[f(s="x)y")]', {"s": "x)y"}),
    ],
)  # fmt: skip
def test_toolace_call_values(call, arguments):
    row = {
        "system": 'Here is a list of functions in JSON format that you can invoke.\n[{"name": "f", "parameters": {}}]',
        "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": call}],
    }
    assert read_row(row).conversation.messages[1].tool_calls[0].arguments == arguments
    row["conversations"][1]["value"] = "[f(1, x=os.system('ls'))]"
    with pytest.raises(SampleError) as err:
        read_row(row, "auto", "t:1")
    assert err.value.reason == "bad_tool_call" and "ToolACE call" in err.value.detail


def test_system_column_against_the_rows_own_system_turn():
    base = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    read = read_row({**base, "system_prompt": "Be terse."})
    assert read.conversation.messages[0].content == "Be terse." and read.ignored == ()
    own = {"messages": [{"role": "system", "content": "Own."}, *base["messages"]]}
    read = read_row({**own, "system": "Other."})
    assert read.conversation.messages[0].content == "Own." and read.ignored == ("system",)
    read = read_row({**own, "system": "Own."})
    assert read.ignored == ()
    empty_own = {"messages": [{"role": "system", "content": " "}, *base["messages"]]}
    read = read_row({**empty_own, "system": "Column."})
    assert [m.content for m in read.conversation.messages] == ["Column.", "q", "a"]


def test_openai_text_parts_keyed_text_or_value():
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "value": "there"}]
    row = {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "value": "Hi"}]}]}  # fmt: skip
    conv = read_row(row).conversation
    assert [m.content for m in conv.messages] == ["Hello there", "Hi"]
    row["messages"][0]["content"] = [{"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(SampleError) as err:
        read_row(row, "auto", "t:1")
    assert err.value.reason == "non_string_content" and "'image_url' part" in err.value.detail


# -- TRL formats -----------------------------------------------------------------------------------


def test_trl_prompt_completion_conversational_and_plain(tokenizer):
    conversational, plain = rows("trl_prompt_completion")
    read, sample, trained = build("plain", conversational, tokenizer)
    assert read.format == "prompt_completion"
    assert trained == "It is blue.<|eot_id|>"
    assert "<|start_header_id|>user<|end_header_id|>\n\nWhat color is the sky?<|eot_id|>" in sample.text
    read, sample, trained = build("plain", plain, tokenizer)
    assert trained == "blue.<|eot_id|>"
    assert "<|start_header_id|>user<|end_header_id|>\n\nThe sky is<|eot_id|>" in sample.text
    bad = {"prompt": "q", "completion": [{"role": "user", "content": "not a reply"}]}
    with pytest.raises(SampleError) as err:
        read_row(bad, "auto", "t:1")
    assert err.value.reason == "bad_message"


@pytest.mark.parametrize(("name", "index", "what"), [
    ("trl_preference", 0, "a preference pair"),
    ("trl_preference", 1, "unpaired preference row"),
    ("ultrafeedback_binarized", 0, "UltraFeedback-binarized"),
])  # fmt: skip
def test_preference_rows_are_refused_not_taken_as_sft(name, index, what):
    row = rows(name)[index]
    with pytest.raises(SampleError) as err:
        read_row(row, "auto", "t:1")
    assert err.value.reason == "preference_row" and what in err.value.detail
    assert "DPO" in err.value.detail


def test_ultrafeedback_messages_when_the_format_is_named(tokenizer):
    (row,) = rows("ultrafeedback_binarized")
    read, _, trained = build("plain", row, tokenizer, fmt="openai")
    assert trained == "Red is a primary colour.<|eot_id|>"
    assert read.ignored == ("chosen", "prompt", "prompt_id", "rejected", "score_chosen", "score_rejected")


def test_rows_without_a_conversation_name_their_shape():
    for row, what in [
        ({"text": "The sky is blue."}, "plain 'text' row"),
        ({"prompt": "The sky"}, "prompt-only"),
    ]:
        with pytest.raises(SampleError) as err:
            read_row(row, "auto", "t:1")
        assert err.value.reason == "no_messages" and what in err.value.detail


def test_hermes_rows_exported_as_openai_messages(tokenizer):
    (row,) = rows("hermes_func_calling")
    as_messages = {
        "messages": [
            {"role": {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}[t["from"]], "content": t["value"]}
            for t in row["conversations"]
        ]
    }  # fmt: skip
    read, _, trained = build("tool_use", as_messages, tokenizer)
    assert read.format == "hermes_fc"
    assert trained.startswith(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    _, native, _ = build("tool_use", row, tokenizer)
    assert build("tool_use", as_messages, tokenizer)[1].input_ids == native.input_ids


def test_unused_turn_keys_are_announced():
    row = {
        "conversations": [
            {"from": "human", "value": "q", "weight": 0},
            {"from": "gpt", "value": "a", "weight": 1, "loss": None},
        ]
    }
    assert read_row(row).ignored == ("conversations[].weight",)


def test_json_mode_agentic_schema_written_under_its_name(tokenizer):
    (row,) = rows("hermes_json_mode")
    named = {"MovieEntry": json.loads(row["schema"])}
    row["conversations"][0]["value"] = (
        f"Answer in JSON. Here's the json schema you must adhere to:\n<schema>\n{named!r}\n</schema>\n"
    )
    del row["schema"]
    row["conversations"][2]["value"] = '{"MovieEntry": {"title": "Alien", "year": 1979}}'
    build("json_schema", row, tokenizer)
    row["conversations"][2]["value"] = '{"title": "Alien", "year": 1979}'  # read literally, this would pass
    err = reason("json_schema", row, tokenizer)
    assert err.reason == "schema_mismatch" and "'MovieEntry' is a required property" in err.detail


def test_legacy_openai_functions_and_function_call(tokenizer):
    row = {
        "functions": [WEATHER_FN],
        "messages": [
            {"role": "user", "content": "Oslo?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"role": "function", "name": "get_weather", "content": '{"temp_c": 7}'},
            {"role": "assistant", "content": "7 °C."},
        ],
    }  # fmt: skip
    read, _, trained = build("tool_use", row, tokenizer)
    assert read.ignored == () and [m.role for m in read.conversation.messages][2] == "tool"
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|eot_id|>7 °C.<|eot_id|>'
    )


def test_alpaca_rows(tokenizer):
    row = {
        "instruction": "Translate to French.",
        "input": "Good morning",
        "output": "Bonjour",
        "history": [["Hi", "Hello!"]],
        "system": "You translate.",
    }
    read, _, trained = build("plain", row, tokenizer)
    assert read.format == "alpaca" and read.ignored == ()
    assert [(m.role, m.content) for m in read.conversation.messages] == [
        ("system", "You translate."), ("user", "Hi"), ("assistant", "Hello!"),
        ("user", "Translate to French.\nGood morning"), ("assistant", "Bonjour"),
    ]  # fmt: skip
    assert trained == "Bonjour<|eot_id|>"  # history is masked under `last`
    assert (
        read_row({"instruction": "Say hi.", "input": "", "output": "Hi"}).conversation.messages[0].content
        == "Say hi."
    )


def test_dolly_and_openorca_columns():
    dolly = {"instruction": "Who wrote it?", "context": "Dune, by Frank Herbert.", "response": "Frank Herbert.", "category": "closed_qa"}  # fmt: skip
    read = read_row(dolly)
    assert [m.content for m in read.conversation.messages] == [
        "Who wrote it?\nDune, by Frank Herbert.",
        "Frank Herbert.",
    ]
    assert read.ignored == ("category",)
    orca = {"id": "niv.1", "system_prompt": "You are an AI assistant.", "question": "2+2?", "response": "4"}
    read = read_row(orca)
    assert [m.role for m in read.conversation.messages] == [
        "system",
        "user",
        "assistant",
    ] and read.ignored == ("id",)
