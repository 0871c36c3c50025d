"""Serving an export: the server set-ups, how each splits a generation, and the round trip.

An OpenAI-compatible server splits each generation into ``reasoning_content``, ``content`` and
``tool_calls``; an agent loop sends that message back with the next request and the chat template
renders it again. The round trip is exact when the re-rendered turn is, byte for byte and token for
token, what the model generated: then the next prompt is the previous prompt + the generation +
``<|eot_id|>`` (no train/serve skew, and the server's prefix cache hits).

The splitting rules below restate the servers' code (neither is a dependency):

* vLLM ``hermes`` tool parser (``Hermes2ProToolParser.extract_tool_calls``): see
  :func:`train.export.verify.report.parse_tool_calls` — content is the text before the first ``<tool_call>``,
  whitespace kept.
* vLLM reasoning parsers (``BaseThinkingReasoningParser.extract_reasoning`` and the ``qwen3``
  override): the text after a first ``<think>`` (if any) is split at the first ``</think>``, both
  sides kept with their whitespace (content ``None`` when empty). Without ``</think>``:
  ``deepseek_r1`` returns everything as reasoning; ``qwen3`` does the same unless the request's
  ``chat_template_kwargs`` say ``enable_thinking: false`` (then everything is content). vLLM hands the
  reasoning parser the request's ``chat_template_kwargs`` merged over ``--default-chat-template-kwargs``.
* SGLang ``qwen3`` reasoning detector: reasoning is forced unless ``enable_thinking`` is false; a
  text that starts with ``<think>`` is reasoning anyway; the reasoning ends at ``</think>`` or, when
  there is none, at a ``<tool_call>``; otherwise everything is reasoning.
* SGLang ``qwen25`` tool detector: the text before the first ``<tool_call>\\n`` is the normal text,
  stripped; calls are the ``<tool_call>\\n(.*?)\\n</tool_call>`` blocks, JSON-parsed; calls naming a
  tool the request does not declare are dropped; arguments are re-serialized with ``json.dumps``.

Our template trims reasoning and content, so every split that keeps the pieces whole re-renders
exactly, whatever whitespace a parser (or version) keeps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from train.export.verify.report import FAIL, PASS, THINK_CLOSE, THINK_OPEN, VerifyReport, parse_tool_calls

EOT = "<|eot_id|>"
SGLANG_CALL_RE = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class Setup:
    """One way of serving the export: engine, parsers, and what the requests carry."""

    name: str
    engine: str  # "vllm" | "sglang"
    reasoning_parser: str | None
    sends_enable_thinking: bool
    """Whether every request carries ``chat_template_kwargs.enable_thinking`` (True or False)."""
    recommended: bool


SETUPS: tuple[Setup, ...] = (
    # the export's model card recommends the first three (train/export/writing/folder.py)
    Setup("vllm hermes + qwen3", "vllm", "qwen3", sends_enable_thinking=True, recommended=True),
    Setup("vllm hermes, no reasoning parser", "vllm", None, sends_enable_thinking=True, recommended=True),
    Setup("sglang qwen25 + qwen3", "sglang", "qwen3", sends_enable_thinking=True, recommended=True),
    # what breaks: a reply without <think> becomes (partly) reasoning and loses its answer / calls
    Setup("vllm hermes + qwen3, without enable_thinking", "vllm", "qwen3", False, False),
    Setup("vllm hermes + deepseek_r1", "vllm", "deepseek_r1", True, False),
    Setup("sglang qwen25 + qwen3, without enable_thinking", "sglang", "qwen3", False, False),
)
RECOMMENDED = tuple(s for s in SETUPS if s.recommended)


def vllm_reasoning(text: str, parser: str, enable_thinking: bool | None) -> tuple[str | None, str | None]:
    """vLLM's ``extract_reasoning`` of the ``qwen3`` / ``deepseek_r1`` parsers (non-streaming)."""
    before, opened, after = text.partition(THINK_OPEN)
    body = after if opened else before
    if THINK_CLOSE in body:
        reasoning, _, content = body.partition(THINK_CLOSE)
        return reasoning, content or None
    if parser == "qwen3" and enable_thinking is False:
        return None, body
    return body, None


def sglang_reasoning(text: str, enable_thinking: bool | None) -> tuple[str | None, str | None]:
    """SGLang's ``Qwen3Detector.detect_and_parse`` with ``force_reasoning`` from the request."""
    forced = enable_thinking is not False
    if not (forced or THINK_OPEN in text):
        return None, text
    body = text
    while body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN) :]
    if THINK_CLOSE in body:
        reasoning, _, content = body.partition(THINK_CLOSE)
        return reasoning, content
    if "<tool_call>" in body:
        cut = body.index("<tool_call>")
        return body[:cut], body[cut:]
    return body, None


def sglang_tool_calls(text: str, tool_names: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """SGLang's ``Qwen25Detector.detect_and_parse``: (normal text, [(name, arguments JSON)])."""
    start = text.find("<tool_call>\n")
    if start < 0:
        return text, []
    calls = []
    for block in SGLANG_CALL_RE.findall(text):
        try:
            call = json.loads(block.strip())
        except json.JSONDecodeError:
            continue  # SGLang logs and skips the block
        if call.get("name") in tool_names:
            args = call.get("parameters") or call.get("arguments", {})
            calls.append((call["name"], json.dumps(args, ensure_ascii=False)))
    return text[:start].strip(), calls


def server_message(setup: Setup, text: str, thinking: bool, tool_names: set[str]) -> dict[str, Any]:
    """The assistant message the server returns for generated ``text`` (stop token removed)."""
    enable = thinking if setup.sends_enable_thinking else None
    if setup.engine == "sglang":
        reasoning, content = sglang_reasoning(text, enable)
        content, calls = sglang_tool_calls(content or "", tool_names)
    else:
        reasoning, content = (
            vllm_reasoning(text, setup.reasoning_parser, enable) if setup.reasoning_parser else (None, text)
        )
        parsed = parse_tool_calls(content or "")
        calls = [(c.name, c.arguments) for c in parsed.tool_calls]
        content = parsed.content
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(calls)
        ]
    return message


# --- the round trip -----------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
LOCAL_TIME = {
    "type": "function",
    "function": {
        "name": "local_time",
        "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call(name: str, city: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": {"city": city}}}


ASK = {"role": "user", "content": "Should I pack an umbrella for Paris, and what time is it in São Paulo?"}
CALL_PARIS, CALL_SAO_PAULO = _call("get_weather", "Paris"), _call("local_time", "São Paulo")


@dataclass(frozen=True)
class Case:
    """A reply the model generates (as training data states it) after ``history``."""

    name: str
    thinking: bool
    history: tuple[dict[str, Any], ...]
    reply: dict[str, Any]
    tools: tuple[dict[str, Any], ...] = (WEATHER, LOCAL_TIME)


def _reply(reasoning: str | None = None, content: str = "", calls: tuple = ()) -> dict[str, Any]:
    return {
        "role": "assistant",
        "reasoning_content": reasoning,
        "content": content,
        "tool_calls": list(calls),
    }


CASES: tuple[Case, ...] = (
    Case("reasoning + call", True, (ASK,), _reply("Need the forecast.", calls=(CALL_PARIS,))),
    Case(
        "reasoning + parallel calls",
        True,
        (ASK,),
        _reply("Two questions.\nOne call each.", calls=(CALL_PARIS, CALL_SAO_PAULO)),
    ),
    Case("content + call", False, (ASK,), _reply(content="Let me check.", calls=(CALL_PARIS,))),
    Case(
        "content + parallel calls",
        False,
        (ASK,),
        _reply(content="Checking both:\n- weather\n- time", calls=(CALL_PARIS, CALL_SAO_PAULO)),
    ),
    Case("call only", False, (ASK,), _reply(calls=(CALL_PARIS,))),
    Case("parallel calls only", False, (ASK,), _reply(calls=(CALL_PARIS, CALL_SAO_PAULO))),
    Case(
        "reasoning + content + calls",
        True,
        (ASK,),
        _reply("Both need tools.", "One moment.", (CALL_PARIS, CALL_SAO_PAULO)),
    ),
    Case(
        "reasoning + answer",
        True,
        ({"role": "user", "content": "Capital of France?"},),
        _reply("Easy.", "Paris."),
        tools=(),
    ),
    Case("answer", False, ({"role": "user", "content": "Capital of France?"},), _reply(content="Paris."), ()),
    Case(
        "reasoning + answer after tool results",
        True,
        (
            ASK,
            _reply("Need the forecast.", calls=(CALL_PARIS,)),
            {"role": "tool", "content": '{"forecast": "rain"}'},
        ),
        _reply("Rain is forecast.", "Yes: rain is forecast in Paris today."),
    ),
)


@dataclass
class RoundTrip:
    case: str
    setup: str
    generated: str
    message: dict[str, Any]
    exact: bool
    detail: str


def _render(tokenizer, case: Case, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages,
        tools=list(case.tools) or None,
        enable_thinking=case.thinking,  # what a server passes from chat_template_kwargs
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def generation(tokenizer, case: Case) -> tuple[str, str]:
    """``(prompt, generated text)``: what a model trained on this template generates for ``case``."""
    prompt = _render(tokenizer, case, list(case.history), True)
    full = _render(tokenizer, case, [*case.history, case.reply], False)
    if not (full.startswith(prompt) and full.endswith(EOT)):
        raise ValueError(f"{case.name}: the training render does not extend the prompt")
    return prompt, full[len(prompt) : -len(EOT)]


def round_trip(tokenizer, case: Case, setup: Setup, dict_arguments: bool = False) -> RoundTrip:
    """Generate, split as ``setup`` does, echo back (with tool results for any call), re-render.

    Exact when the re-rendered conversation starts with prompt + generation + ``<|eot_id|>``, as text
    and as token ids. ``dict_arguments``: the echoed arguments as objects (vLLM converts the JSON
    strings to dicts before rendering) instead of the strings the server returned.
    """
    prompt, generated = generation(tokenizer, case)
    names = {t["function"]["name"] for t in case.tools}
    message = server_message(setup, generated, case.thinking, names)
    echoed = json.loads(json.dumps(message))
    for call in echoed.get("tool_calls", []):
        if dict_arguments:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    results = [
        {"role": "tool", "tool_call_id": c["id"], "content": '{"ok": true}'}
        for c in echoed.get("tool_calls", [])
    ]
    again = _render(tokenizer, case, [*case.history, echoed, *results], bool(results))
    want = prompt + generated + EOT
    want_ids = tokenizer(want, add_special_tokens=False)["input_ids"]
    again_ids = tokenizer(again, add_special_tokens=False)["input_ids"]
    exact = again.startswith(want) and again_ids[: len(want_ids)] == want_ids
    detail = "exact" if exact else f"re-rendered as {again[len(prompt) :][: len(generated) + 40]!r}"
    return RoundTrip(case.name, setup.name, generated, message, exact, detail)


def round_trip_summary(tokenizer) -> tuple[bool, str, dict[str, Any]]:
    """Every case through every set-up (both argument forms): (recommended all exact, detail, metrics)."""
    exact: dict[str, int] = {}
    failures: list[str] = []
    for setup in SETUPS:
        results = [round_trip(tokenizer, c, setup, d) for c in CASES for d in (False, True)]
        exact[setup.name] = sum(r.exact for r in results)
        if setup.recommended:
            failures += [f"{r.setup} / {r.case}: {r.detail}" for r in results if not r.exact]
    n = 2 * len(CASES)
    rec = ", ".join(f"{s.name} {exact[s.name]}/{n}" for s in RECOMMENDED)
    other = ", ".join(f"{s.name} {exact[s.name]}/{n}" for s in SETUPS if not s.recommended)
    detail = (
        f"{len(CASES)} generations (reasoning / content / calls, single and parallel) split, echoed and "
        f"re-rendered exactly: {rec}; not recommended: {other}"
    )
    return not failures, "; ".join(failures) if failures else detail, {"exact": exact, "of": n}


def check_round_trip(report: VerifyReport, tokenizer) -> None:
    """The ``round_trip`` row: :func:`round_trip_summary` through the exported tokenizer."""
    try:
        ok, detail, metrics = round_trip_summary(tokenizer)
    except Exception as err:  # a template that cannot render the cases is the finding, not a crash
        report.add("round_trip", FAIL, f"the template cannot render the cases: {type(err).__name__}: {err}")
        return
    report.add("round_trip", PASS if ok else FAIL, detail, **metrics)
