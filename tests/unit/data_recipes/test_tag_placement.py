"""Hermes tags outside their place are dropped (``tag_out_of_place``), each tag in each wrong place;
the tags in their places (template-written, interleaved blocks in the reasoning) are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_recipes.build import build
from data_recipes.messages import SampleError, conversation_from_openai
from data_recipes.mixture import load_mixture
from data_recipes.render import RenderOptions, render
from data_recipes.tag_placement import misplaced_tag

REPO = Path(__file__).resolve().parents[3]
TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


def call(args, name="f"):
    return {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": name, "arguments": args}}]}


def result(text):
    return {"role": "tool", "tool_call_id": "c1", "content": text}


def mention(tag):
    return f"Write {tag} then the JSON."


PLACES = {
    "system": lambda t: [{"role": "system", "content": mention(t)}, U, A],
    "user": lambda t: [{"role": "user", "content": mention(t)}, A],
    "tool result": lambda t: [U, call({}), result(f'{{"page": "{mention(t)}"}}'), A],
    "assistant prose": lambda t: [U, {"role": "assistant", "content": mention(t)}],
    "prose before a call": lambda t: [U, {**call({"x": 1}), "content": mention(t)}, result("1"), A],
    "call arguments": lambda t: [U, call({"text": mention(t)}), result("1"), A],
    "call arguments (JSON string)": lambda t: [U, call(json.dumps({"text": t})), result("1"), A],
    "tool definitions": lambda t: [U, A],
}


def row(place, tag):
    tools = [TOOL]
    if place == "tool definitions":
        tools = [{"type": "function", "function": {**TOOL["function"], "description": mention(tag)}}]
    return {"messages": PLACES[place](tag), "tools": tools}


def expected_reason(place, tag):
    # think tags in assistant content are a malformed inline reasoning block: the older, more precise
    # reason bad_think_tags applies (unbalanced / not first / repeated)
    in_content = place in ("assistant prose", "prose before a call")
    return "bad_think_tags" if in_content and "think" in tag else "tag_out_of_place"


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("place", list(PLACES))
def test_each_tag_in_each_wrong_place_is_dropped_with_its_origin(place, tag):
    with pytest.raises(SampleError) as err:
        conversation_from_openai(row(place, tag), origin="data.jsonl:7")
    assert err.value.reason == expected_reason(place, tag)
    assert err.value.origin == "data.jsonl:7" and "data.jsonl:7" in str(err.value)
    if err.value.reason == "tag_out_of_place":
        assert tag in err.value.detail


def test_details_say_where_and_why():
    cases = {
        "user": "<tool_call> outside a tool call (in message 0, user content)",
        "tool result": "</tool_response> outside a tool result (in message 2, tool content)",
        "call arguments": "</tool_call> inside tool call 'f' of message 1 (vLLM's hermes parser would end",
        "system": "<think> outside the reasoning slot (in message 0, system content)",
    }
    tags = {"user": "<tool_call>", "tool result": "</tool_response>", "call arguments": "</tool_call>"}
    for place, want in cases.items():
        with pytest.raises(SampleError) as err:
            conversation_from_openai(row(place, tags.get(place, "<think>")))
        assert want in err.value.detail, err.value.detail


@pytest.mark.parametrize(
    ("reasoning", "why"),
    [
        ("a <tool_call> b", "is not closed"),
        ("a </tool_call> b", "</tool_call> outside a tool call"),
        ("<tool_call>{}</tool_response> x", "</tool_response> inside an interleaved <tool_call> block"),
        ('<tool_call>{"name": "f", "arguments": {"s": "<tool_call>"}}</tool_call>', "inside an interleaved"),
        ("<tool_response>r</tool_response></tool_response>", "</tool_response> outside a tool result"),
        ("<tool_response>r", "is not closed"),
    ],
)
def test_reasoning_allows_only_whole_interleaved_blocks(reasoning, why):
    bad = {"messages": [U, {"role": "assistant", "reasoning_content": reasoning, "content": "a"}]}
    with pytest.raises(SampleError) as err:
        conversation_from_openai(bad)
    assert err.value.reason == "tag_out_of_place" and why in err.value.detail


def test_tags_in_their_places_are_kept(tokenizer):
    interleaved = (
        'Need data.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n'
        "<tool_response>\n{}\n</tool_response>\nDone."
    )
    good = {
        "tools": [TOOL],
        "messages": [
            U,
            {
                "role": "assistant",
                "content": "<think>\nr\n</think>\nLet me call.",
                "tool_calls": call({})["tool_calls"],
            },
            result('{"ok": true}'),
            {
                "role": "assistant",
                "reasoning_content": interleaved,
                "content": "Answer with < and > and </b>.",
            },
        ],
    }
    sample = render(conversation_from_openai(good, "ok.jsonl:1"), tokenizer, RenderOptions())
    assert sample.text.count("<tool_call>") == 3  # tools prompt, the call, the interleaved call
    assert misplaced_tag("plain <b>text</b>", "text", "x") is None


def test_drops_are_counted_in_the_manifest_with_file_and_line(tmp_path):
    out = tmp_path / "built"
    manifest = build(
        load_mixture(REPO / "tests" / "data" / "tags" / "tags.yaml", []), out, num_proc=1, progress=False
    ).manifest
    assert manifest["dropped"] == {"tag_out_of_place": 3}
    assert manifest["num_samples_kept"] == 1
    assert manifest["drop_examples"]["tag_out_of_place"] == [
        "tests/data/tags/tags.jsonl:2",
        "tests/data/tags/tags.jsonl:3",
        "tests/data/tags/tags.jsonl:4",
    ]
    details = manifest["drop_details"]["tag_out_of_place"]
    assert "<tool_call> outside a tool call (in message 1, assistant content)" in details[0]
    assert "</tool_call> inside tool call 'get_weather'" in details[1]
    assert "<tool_response> outside a tool result (in message 0, user content)" in details[2]
