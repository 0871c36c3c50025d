"""``json_schema`` (structured output): the answer is JSON that validates against a given schema.

The schema is read from the conversation itself, the way the model will see it: the last user turn
before the trained reply, else the system turn. Inside that text, a ``<schema>…</schema>`` block wins
(JSON, or a Python literal as in the published Hermes json-mode rows, whose system turn reads
"Here's the json schema you must adhere to:\n<schema>\n{'title': …}\n</schema>"); otherwise the first
JSON object, bare or fenced, that looks like a JSON Schema (has ``type``, ``properties`` or
``$schema``). A schema written under its name, ``{'Name': {'type': 'object', …}}`` (json-mode-agentic),
means an object with that one required property. When the text holds none, the row's own ``schema`` column is used
(``Conversation.meta["schema"]``, read by :mod:`data_recipes.formats.columns`). The answer is the
content of the last trained assistant turn, bare or in a fenced block or
``<json_output>…</json_output>`` (Atropos' format).

Drops: ``no_schema``, ``invalid_schema`` (the schema itself fails its metaschema, or a ``<schema>``
block / ``schema`` column that is neither JSON nor a Python literal), ``answer_not_json``,
``schema_mismatch`` (with the validator's message).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
from transformers import PreTrainedTokenizerBase

from data_recipes.formats.literals import loads_lenient
from data_recipes.messages import Conversation, SampleError
from data_recipes.recipes.common import Prepared, RecipeOptions, thinking_flag, trained

FENCE_RE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)
WRAP_RE = re.compile(r"^<json_output>(.*?)</json_output>$", re.DOTALL)
SCHEMA_TAG_RE = re.compile(r"<schema>(.*?)</schema>", re.DOTALL)
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


def unwrap_named_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema written as ``{"Name": {…schema…}}`` (as Hermes json-mode-agentic rows do, the answer
    being ``{"Name": {…}}``) as the object schema it means; any other schema unchanged.

    Read literally, ``"Name"`` is an unknown keyword and the schema would accept every answer."""
    if len(schema) != 1 or any(k in schema for k in SCHEMA_KEYS):
        return schema
    ((name, inner),) = schema.items()
    if not isinstance(inner, dict) or not any(k in inner for k in SCHEMA_KEYS):
        return schema
    return {"type": "object", "properties": {name: inner}, "required": [name]}


def _tagged_schema(text: str, origin: str) -> dict[str, Any] | None:
    """The first ``<schema>`` block of ``text``, parsed as JSON or a Python literal."""
    for block in SCHEMA_TAG_RE.findall(text):
        try:
            schema = loads_lenient(block)
        except ValueError as err:
            raise SampleError("invalid_schema", f"the <schema> block is {err}", origin) from err
        if not isinstance(schema, dict):
            raise SampleError("invalid_schema", f"the <schema> block holds {type(schema).__name__}", origin)
        return schema
    return None


def _column_schema(conv: Conversation) -> dict[str, Any] | None:
    schema = conv.meta.get("schema")
    if schema is None or isinstance(schema, dict):
        return schema
    try:
        parsed = loads_lenient(str(schema))
    except ValueError as err:
        raise SampleError("invalid_schema", f"the 'schema' column is {err}", conv.origin) from err
    if not isinstance(parsed, dict):
        raise SampleError("invalid_schema", "the 'schema' column is not an object", conv.origin)
    return parsed


def find_schema(conv: Conversation, reply: int) -> dict[str, Any] | None:
    """The schema stated before message ``reply`` (last user turn, then system turn), else the row's
    ``schema`` column."""
    users = [m for m in conv.messages[:reply] if m.role == "user"]
    systems = [m for m in conv.messages[:reply] if m.role == "system"]
    for message in users[-1:] + systems:
        if (tagged := _tagged_schema(message.content, conv.origin)) is not None:
            return tagged
        for obj in json_objects(message.content):
            if any(k in obj for k in SCHEMA_KEYS):
                return obj
    return _column_schema(conv)


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
    if schema is not None:
        schema = unwrap_named_schema(schema)
    if schema is None:
        raise SampleError(
            "no_schema", "no JSON schema in the user or system turn, and no 'schema' column", conv.origin
        )
    check_answer(schema, parse_answer(conv.messages[reply].content, conv.origin), conv.origin)
    has_reasoning = any(conv.messages[i].reasoning for i in turns)
    return Prepared(conv, thinking_flag(conv, options, default=has_reasoning), policy)
