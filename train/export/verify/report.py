"""The bottom of ``verify``: the check / report types every check writes into, and the parser that
reads model output the way servers do (a generated answer is judged by what it parses into).


Parse model output the way the servers do: reasoning (``<think>``) and Hermes tool calls.

Tool calls follow vLLM's ``hermes`` parser (``Hermes2ProToolParser.extract_tool_calls``):

* no ``<tool_call>`` in the text → no calls, the whole text is content;
* every match of ``<tool_call>(.*?)</tool_call>|<tool_call>(.*)`` (DOTALL; the second branch takes an
  unterminated final call) is ``json.loads``-ed and must have ``"name"`` and ``"arguments"``;
  arguments are re-serialized with ``json.dumps(..., ensure_ascii=False)``;
* content is the text before the first ``<tool_call>`` (``None`` when empty);
* any failure (bad JSON, a missing key) makes the whole output plain content with no calls.

Reasoning follows vLLM's ``qwen3`` reasoning parser (``<think>…</think>``) for a request with
``enable_thinking: false``: the text after an opening ``<think>`` (if any) up to ``</think>`` is
reasoning and the rest is content; without ``</think>`` the output is all content. Servers run the
reasoning parser first and the tool parser on the content. Every server set-up, and the round trip
of its split through the template, is in :mod:`train.export.verify.serving`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    """What an exported folder is compared against."""

    description: str
    weights: Any  # train.export.reading.source.Weights
    tokenizer_dir: Path | None = None
    manifest: dict[str, Any] | None = None


@dataclass
class VerifyReport:
    folder: Path
    kind: str
    reference: str | None
    checks: list[Check] = field(default_factory=list)
    display_name: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def add(self, name: str, status: str, detail: str, **metrics: Any) -> Check:
        c = Check(name, status, detail, metrics)
        self.checks.append(c)
        return c

    def rows_for_card(self) -> list[tuple[str, str, str]]:
        return [(c.name, c.status.upper(), c.detail) for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "kind": self.kind,
            "reference": self.reference,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail, "metrics": c.metrics}
                for c in self.checks
            ],
        }

    def table(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"verify {self.display_name or self.folder.name} ({self.kind})", show_lines=False)
        for col in ("check", "result", "detail"):
            table.add_column(col, overflow="fold")
        style = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}
        for c in self.checks:
            table.add_row(c.name, f"[{style[c.status]}]{c.status.upper()}[/]", c.detail)
        console = Console(width=120, record=True, force_terminal=False, color_system=None)
        with console.capture() as cap:
            console.print(table)
            console.print(f"result: {'PASS' if self.ok else 'FAIL'}")
        return cap.get()


TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
THINK_OPEN, THINK_CLOSE, CALL_OPEN = "<think>", "</think>", "<tool_call>"


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: str
    """JSON text, as vLLM returns it (``json.dumps`` of the parsed arguments)."""


@dataclass
class ToolParse:
    tools_called: bool
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    content: str | None = None
    error: str | None = None
    """Why the output fell back to plain content (for diagnostics; vLLM only logs it)."""


@dataclass
class ParsedOutput:
    reasoning: str | None
    content: str | None
    tool_calls: list[ParsedToolCall]
    tool_error: str | None = None


def parse_tool_calls(text: str) -> ToolParse:
    if CALL_OPEN not in text:
        return ToolParse(False, [], text)
    try:
        calls = []
        for closed, unterminated in TOOL_CALL_RE.findall(text):
            raw = json.loads(closed if closed else unterminated)
            calls.append(ParsedToolCall(raw["name"], json.dumps(raw["arguments"], ensure_ascii=False)))
    except (ValueError, KeyError, TypeError) as err:
        return ToolParse(False, [], text, error=f"{type(err).__name__}: {err}")
    content = text[: text.find(CALL_OPEN)]
    return ToolParse(True, calls, content or None)


def parse_reasoning(text: str) -> tuple[str | None, str | None]:
    """``(reasoning, content)``; content is ``None`` when nothing follows ``</think>``."""
    before, opened, after = text.partition(THINK_OPEN)
    body = after if opened else before
    if THINK_CLOSE not in body:
        return None, text
    reasoning, _, content = body.partition(THINK_CLOSE)
    return reasoning, content or None


def parse_output(text: str) -> ParsedOutput:
    """Reasoning first, then tool calls on what remains (as a server with both parsers does)."""
    reasoning, content = parse_reasoning(text)
    tools = parse_tool_calls(content or "")
    if tools.tools_called:
        return ParsedOutput(reasoning, tools.content, tools.tool_calls)
    return ParsedOutput(reasoning, content, [], tools.error)
