"""``json_schema`` (structured output): the answer is JSON that validates against a given schema.

The schema is read from the conversation itself, the way the model will see it: the last user turn
before the trained reply, else the system turn. Inside that text it may sit in a fenced code block,
in ``<schema>…</schema>``, or as bare JSON; the first JSON object that looks like a JSON Schema (has
``type``, ``properties`` or ``$schema``) is used. The answer is the content of the last trained
assistant turn, bare or in a fenced block or ``<json_output>…</json_output>`` (Atropos' format).

Drops: ``no_schema``, ``invalid_schema`` (the schema itself fails its metaschema), ``answer_not_json``,
``schema_mismatch`` (with the validator's message).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
from transformers import PreTrainedTokenizerBase

from data_recipes.messages import Conversation, SampleError
from data_recipes.recipes.common import Prepared, RecipeOptions, thinking_flag, trained

FENCE_RE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)
WRAP_RE = re.compile(r"^<json_output>(.*?)</json_output>$", re.DOTALL)
SCHEMA_KEYS = ("$schema", "type", "properties")
_DECODER = json.JSONDecoder()


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object embedded in ``text``, outermost first, in order of appearance."""
    found, i = [], text.find("{")
    while i != -1:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = text.find("{", end)
    return found


def find_schema(conv: Conversation, reply: int) -> dict[str, Any] | None:
    """The schema stated before message ``reply``: last user turn first, then the system turn."""
    users = [m for m in conv.messages[:reply] if m.role == "user"]
    systems = [m for m in conv.messages[:reply] if m.role == "system"]
    for message in users[-1:] + systems:
        for obj in json_objects(message.content):
            if any(k in obj for k in SCHEMA_KEYS):
                return obj
    return None


def parse_answer(content: str, origin: str) -> Any:
    text = content.strip()
    for pattern in (FENCE_RE, WRAP_RE):
        if m := pattern.match(text):
            text = m.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SampleError(
            "answer_not_json", f"the answer is not JSON ({err.msg} at char {err.pos})", origin
        ) from err


def check_answer(schema: dict[str, Any], answer: Any, origin: str) -> None:
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise SampleError("invalid_schema", f"the schema is not valid: {err.message}", origin) from err
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(answer))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        raise SampleError("schema_mismatch", f"answer fails the schema at {where}: {error.message}", origin)


def prepare(
    conv: Conversation,
    options: RecipeOptions,
    policy: Literal["last", "keep"],
    tokenizer: PreTrainedTokenizerBase,
) -> Prepared:
    turns = trained(conv, policy)
    if not turns:
        raise SampleError("no_trained_tokens", "no assistant turn after the last user turn", conv.origin)
    reply = turns[-1]
    schema = find_schema(conv, reply)
    if schema is None:
        raise SampleError("no_schema", "no JSON schema in the user or system turn", conv.origin)
    check_answer(schema, parse_answer(conv.messages[reply].content, conv.origin), conv.origin)
    has_reasoning = any(conv.messages[i].reasoning for i in turns)
    return Prepared(conv, thinking_flag(conv, options, default=has_reasoning), policy)
