"""Lenient reading of the JSON-ish text public datasets put inside tags and turns.

Published rows write dicts as Python literals (``{'name': 'f', 'arguments': {'x': True}}``, as the
Hermes function-calling and json-mode sets do) and sometimes escape the newlines around a tag's body
twice (``<tool_call>\\n{…}\\n</tool_call>`` with a literal backslash-n). Both are read as meant; the
values are parsed (``ast.literal_eval``), never evaluated.
"""

from __future__ import annotations

import ast
import json
from typing import Any


def strip_block(text: str) -> str:
    """A tag's inner text without surrounding whitespace, also when written as literal ``\\n`` escapes."""
    text = text.strip()
    while text.startswith("\\n"):
        text = text[2:].lstrip()
    while text.endswith("\\n"):
        text = text[:-2].rstrip()
    return text


def loads_lenient(text: str) -> Any:
    """JSON, or a Python literal; ``ValueError`` naming neither fits."""
    text = strip_block(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise ValueError(f"neither JSON nor a Python literal ({type(err).__name__})") from err
