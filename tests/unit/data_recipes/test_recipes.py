"""The five recipes: checks (exact drop reasons), render settings, and label rules (golden masks)."""

from __future__ import annotations

import json

import pytest

from data_recipes.formats.detect import to_conversation
from data_recipes.messages import SampleError
from data_recipes.recipes import RECIPES
from data_recipes.recipes.common import RecipeOptions, apply_label_rules
from data_recipes.recipes.length_control import cut_reasoning
from data_recipes.render import render_batch
from data_recipes.tokenizer import EOT_ID, THINK_CLOSE_ID

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
THINKING_PROMPT_START = "<|start_header_id|>system<|end_header_id|>\n\nYou are a deep thinking AI"


def conv(messages, tools=()):
    return to_conversation({"messages": messages, "tools": list(tools)}, "openai", "t:1")[1]


def run(recipe, c, tokenizer, policy="last", **options):
    prepared = RECIPES[recipe](c, RecipeOptions(**options), policy, tokenizer)
    (sample,) = render_batch([prepared.conv], tokenizer, prepared.options)
    assert not isinstance(sample, SampleError), sample
    return prepared, apply_label_rules(sample, prepared)


def trained_text(tokenizer, sample):
    return tokenizer.decode([t for t in sample.labels if t != -100])


def reason_of(recipe, c, tokenizer, **options):
    with pytest.raises(SampleError) as err:
        RECIPES[recipe](c, RecipeOptions(**options), "last", tokenizer)
    assert err.value.origin == "t:1"
    return err.value.reason


U = {"role": "user", "content": "Is 91 prime?"}
R = {"role": "assistant", "reasoning_content": "91 = 7 x 13.", "content": "No."}
P = {"role": "assistant", "content": "No."}


def test_reasoning_renders_with_thinking_prompt(tokenizer):
    prepared, s = run("reasoning", conv([U, R]), tokenizer)
    assert prepared.thinking and THINKING_PROMPT_START in s.text
    assert trained_text(tokenizer, s) == "<think>\n91 = 7 x 13.\n</think>\nNo.<|eot_id|>"
    assert reason_of("reasoning", conv([U, P]), tokenizer) == "missing_reasoning"


def test_reasoning_never_adds_the_thinking_prompt_twice(tokenizer):
    own = {"role": "system", "content": "You are a deep thinking AI. Think hard."}
    prepared, s = run("reasoning", conv([own, U, R]), tokenizer)
    assert not prepared.thinking and s.text.count("You are a deep thinking AI") == 1
    prepared, _ = run("reasoning", conv([U, R]), tokenizer, thinking=False)
    assert not prepared.thinking


def test_reasoning_checks_every_trained_turn_under_keep(tokenizer):
    c = conv([U, P, {"role": "user", "content": "Sure?"}, R])
    assert run("reasoning", c, tokenizer)[0].thinking  # `last`: only the final reply is trained
    with pytest.raises(SampleError) as err:
        RECIPES["reasoning"](c, RecipeOptions(), "keep", tokenizer)
    assert err.value.reason == "missing_reasoning"


def test_plain(tokenizer):
    prepared, s = run("plain", conv([U, P]), tokenizer)
    assert not prepared.thinking and "You are Hermes, created by Nous Research." in s.text
    assert trained_text(tokenizer, s) == "No.<|eot_id|>"
    assert reason_of("plain", conv([U, R]), tokenizer) == "unexpected_reasoning"


def call(name, args='{"city": "Oslo"}'):
    return {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": name, "arguments": args}}]}


TOOL_RESULT = {"role": "tool", "tool_call_id": "c", "content": "7"}


def test_tool_use_checks(tokenizer):
    ok = [U, call("get_weather"), TOOL_RESULT, P]
    prepared, s = run("tool_use", conv(ok, [WEATHER]), tokenizer)
    assert not prepared.thinking
    assert trained_text(tokenizer, s) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|eot_id|>No.<|eot_id|>'
    )
    assert reason_of("tool_use", conv(ok), tokenizer) == "no_tools"
    assert (
        reason_of("tool_use", conv([U, call("launch"), TOOL_RESULT, P], [WEATHER]), tokenizer)
        == "undeclared_tool"
    )
    assert reason_of("tool_use", conv([U, P], [WEATHER]), tokenizer) == "no_tool_call"
    run("tool_use", conv([U, P], [WEATHER]), tokenizer, require_call=False)


def interleaved(name="get_weather", args='{"city": "Oslo"}'):
    inner = f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>\n<tool_response>\n7 C\n</tool_response>'
    return {"role": "assistant", "reasoning_content": f"Check.\n{inner}\nCold.", "content": "Take a coat."}


def test_tool_use_interleaved_results_are_masked(tokenizer):
    prepared, s = run("tool_use", conv([U, interleaved()], [WEATHER]), tokenizer)
    assert prepared.thinking  # the trained turn has reasoning
    runs = tokenizer.decode([t if t != -100 else 0 for t in s.labels]).replace("!", "")  # id 0 is "!"
    assert runs == (
        '<think>\nCheck.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        "\nCold.\n</think>\nTake a coat.<|eot_id|>"
    )
    response = s.input_ids.index(128017)
    assert s.labels[response - 1] != -100 and s.labels[response] == -100
    assert s.labels[s.input_ids.index(128018)] == -100
    assert reason_of("tool_use", conv([U, interleaved("launch")], [WEATHER]), tokenizer) == "undeclared_tool"
    assert (
        reason_of("tool_use", conv([U, interleaved(args="[1]")], [WEATHER]), tokenizer)
        == "bad_tool_arguments"
    )


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "user", "content": f"JSON per {json.dumps(SCHEMA)}"}, {"role": "assistant", "content": '{"n": "x"}'}], "schema_mismatch"),
        ([{"role": "user", "content": f"JSON per {json.dumps(SCHEMA)}"}, {"role": "assistant", "content": "n=3"}], "answer_not_json"),
        ([{"role": "user", "content": 'JSON per {"type": "object", "required": 5}'}, {"role": "assistant", "content": "{}"}], "invalid_schema"),
        ([{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": '{"n": 1}'}], "no_schema"),
    ],
)  # fmt: skip
def test_json_schema_drops(messages, reason, tokenizer):
    assert reason_of("json_schema", conv(messages), tokenizer) == reason


def test_json_schema_accepts_fenced_tagged_and_system_schemas(tokenizer):
    user = {"role": "user", "content": f"Schema:\n```json\n{json.dumps(SCHEMA)}\n```\nText: n is 3"}
    for answer in ('```json\n{"n": 3}\n```', '<json_output>{"n": 3}</json_output>', '{"n": 3}'):
        run("json_schema", conv([user, {"role": "assistant", "content": answer}]), tokenizer)
    system = {"role": "system", "content": f"Reply with JSON valid against {json.dumps(SCHEMA)}."}
    prepared, _ = run(
        "json_schema",
        conv([system, U, {"role": "assistant", "reasoning_content": "n.", "content": '{"n": 1}'}]),
        tokenizer,
    )
    assert prepared.thinking


LONG = "Step one is to add. " * 40  # 200+ tokens


def test_length_control_cut_and_mask(tokenizer):
    ids = tokenizer(LONG.strip(), add_special_tokens=False)["input_ids"]
    expected_cut = tokenizer.decode(ids[:50]).rstrip()
    assert cut_reasoning(LONG.strip(), 50, tokenizer) == expected_cut
    assert cut_reasoning(LONG.strip(), len(ids), tokenizer) is None
    c = conv([U, {"role": "assistant", "reasoning_content": LONG, "content": "The answer is 4."}])
    prepared, s = run("length_control", c, tokenizer, budget=50)
    assert prepared.cut_turns == (1,) and prepared.conv.messages[1].reasoning == expected_cut
    assert prepared.conv.messages[1].content == "The answer is 4."  # the answer is kept, only masked
    trained = [(i, t) for i, t in enumerate(s.labels) if t != -100]
    assert [t for _, t in trained] == [THINK_CLOSE_ID, EOT_ID]
    close, eot = (i for i, _ in trained)
    assert s.input_ids[close - 1] == 198 and eot == len(s.input_ids) - 1  # "\n</think>", final <|eot_id|>
    assert tokenizer.decode(s.input_ids[close + 1 : eot]) == "\nThe answer is 4."
    assert f"<think>\n{expected_cut}\n</think>\nThe answer is 4.<|eot_id|>" in s.text


def test_length_control_under_budget_keeps_normal_mask(tokenizer):
    prepared, s = run("length_control", conv([U, R]), tokenizer, budget=50)
    assert prepared.cut_turns == ()
    assert trained_text(tokenizer, s) == "<think>\n91 = 7 x 13.\n</think>\nNo.<|eot_id|>"
    assert reason_of("length_control", conv([U, P]), tokenizer, budget=50) == "missing_reasoning"


def test_length_control_never_splits_a_character(tokenizer):
    text = "é" * 40  # multi-byte characters; some token cuts land inside one
    for budget in range(1, 12):
        cut = cut_reasoning(text, budget, tokenizer)
        assert cut is not None and "\ufffd" not in cut and text.startswith(cut)
