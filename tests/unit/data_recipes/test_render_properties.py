"""Property tests: every generated valid conversation renders with all invariants holding, checked here
independently of the renderer's own checker (whole-text tokenization, single BOS, decoded trained runs,
inference-prompt prefix, parity with apply_chat_template's assistant mask)."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_recipes.messages import conversation_from_openai, to_template_messages
from data_recipes.render import IGNORE_INDEX, RenderOptions, render_all, render_text

# No "<": keeps control tokens and tags out of generated text (they have their own tests).
ALPHABET = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="<",
    whitelist_categories=("L", "N", "P", "S", "Zs", "Cc"),
)
TEXT = st.text(alphabet=ALPHABET, min_size=1, max_size=40)
NONBLANK = TEXT.filter(lambda s: s.strip())
ARGS = st.dictionaries(
    st.text(alphabet="abcxyz_", min_size=1, max_size=6), st.one_of(st.integers(), TEXT), max_size=3
)


@st.composite
def reply(draw, tool_names):
    """One reply: optional tool calls + results, then a final assistant message."""
    msgs = []
    if tool_names and draw(st.booleans()):
        calls = [
            {
                "type": "function",
                "function": {"name": draw(st.sampled_from(tool_names)), "arguments": draw(ARGS)},
            }
            for _ in range(draw(st.integers(1, 2)))
        ]
        msgs.append(
            {"role": "assistant", "reasoning_content": draw(st.none() | NONBLANK), "tool_calls": calls}
        )
        msgs += [{"role": "tool", "content": draw(TEXT)} for _ in calls]
    msgs.append(
        {"role": "assistant", "reasoning_content": draw(st.none() | NONBLANK), "content": draw(NONBLANK)}
    )
    return msgs


@st.composite
def conversations(draw):
    tool_names = draw(st.lists(st.sampled_from(["search", "calc", "get_weather"]), max_size=2, unique=True))
    msgs = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(TEXT)})
        msgs += draw(reply(tool_names))
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in tool_names
    ]
    return {"messages": msgs, "tools": tools}


def expected_body(msg: dict) -> str:
    reasoning = (msg.get("reasoning_content") or "").strip()
    head = f"<think>\n{reasoning}\n</think>\n" if reasoning else ""
    pieces = [msg["content"].strip()] if (msg.get("content") or "").strip() else []
    pieces += [
        "<tool_call>\n"
        + json.dumps(
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False
        )
        + "\n</tool_call>"
        for c in msg.get("tool_calls", [])
    ]
    return head + "\n".join(pieces) + "<|eot_id|>"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(row=conversations(), thinking=st.booleans(), history=st.sampled_from(["last", "keep", "expand"]))
def test_invariants_hold_for_generated_conversations(tokenizer, trained_texts, row, thinking, history):
    conv = conversation_from_openai(row, "generated")
    options = RenderOptions(thinking=thinking, history=history)
    samples = render_all(conv, tokenizer, options)
    n_replies = sum(1 for i, m in enumerate(row["messages"]) if m["role"] == "user")
    assert len(samples) == (n_replies if history == "expand" else 1)
    for sample in samples:
        ids = sample.input_ids
        assert ids[0] == 128000 and ids.count(128000) == 1
        assert tokenizer(sample.text, add_special_tokens=True)["input_ids"] == ids  # whole text → same ids
        assert sample.num_trained > 0
    final = samples[-1]
    msgs = row["messages"]
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    trained_msgs = [
        m for i, m in enumerate(msgs) if m["role"] == "assistant" and (history == "keep" or i > last_user)
    ]
    decoded = trained_texts(final)
    assert decoded == [expected_body(m) for m in trained_msgs]
    # The inference prompt (history + generation prompt) is a token prefix of the training render.
    policy = replace(options, history="last" if history == "expand" else history)
    prompt_conv = replace(conv, messages=conv.messages[: last_user + 1])
    prompt = render_text(prompt_conv, policy, add_generation_prompt=True)[0]
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert final.input_ids[: len(prompt_ids)] == prompt_ids
    if history != "expand":
        out = tokenizer.apply_chat_template(
            to_template_messages(conv), tools=list(conv.tools) or None, return_dict=True,
            return_assistant_tokens_mask=True, thinking=thinking, keep_cots=history == "keep",
            last_reply_only=history != "keep",
        )  # fmt: skip
        assert out["input_ids"] == final.input_ids
        assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in final.labels]
