"""Compile and render ``chat_template.jinja`` for training, with the trained (generation) spans.

transformers renders chat templates in an immutable *sandboxed* Jinja environment, because templates
from the Hub are untrusted code. Ours ships in this package, so training renders it in a plain
environment configured the same way (``trim_blocks``, ``lstrip_blocks``, loop controls, the same
``tojson`` and ``raise_exception``, a ``{% generation %}`` tag that records character spans). That
is about twice as fast, and the output is proven identical to ``apply_chat_template`` — ids and
assistant masks — by the golden, property and TRL tests.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension

from data_recipes.tokenizer import chat_template_text


class _GenerationSpans(Extension):
    """``{% generation %}…{% endgeneration %}``: renders its body and records its character span."""

    tags = {"generation"}  # noqa: RUF012 (jinja's Extension API)

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(
            self.call_method("_record", [nodes.ContextReference()]), [], [], body
        ).set_lineno(lineno)

    def _record(self, context, caller):
        text = caller()
        tracker = context.get("_span_tracker")
        # Rendering is lazy: everything before this block has been consumed, so `position` is its start.
        tracker.spans.append((tracker.position, tracker.position + len(text)))
        return text


def _tojson(x: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    # Same signature and behaviour as transformers' override of Jinja's HTML-escaping tojson.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=1)
def compiled_template() -> jinja2.Template:
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationSpans, "jinja2.ext.loopcontrols"],
        undefined=jinja2.Undefined,
        autoescape=False,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env.from_string(chat_template_text())


class _Tracker:
    __slots__ = ("position", "spans")

    def __init__(self) -> None:
        self.position = 0
        self.spans: list[tuple[int, int]] = []


def render_with_spans(**variables: Any) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its generation blocks, in order."""
    tracker = _Tracker()
    pieces: list[str] = []
    for piece in compiled_template().generate(_span_tracker=tracker, **variables):
        pieces.append(piece)
        tracker.position += len(piece)
    return "".join(pieces), tracker.spans
