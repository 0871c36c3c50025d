"""Helpers shared by the data_recipes tests (fixtures, since test modules cannot import conftest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from data_recipes.render import IGNORE_INDEX, RenderedSample


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(text, name="config.yaml")``: a YAML config in the test's ``tmp_path``."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[str, list[Any]], Path]:
    """``write_jsonl(name, rows)``: one line per row in ``tmp_path``; a str row is written as is
    (for malformed lines), anything else as JSON."""

    def write(name: str, rows: list[Any]) -> Path:
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path

    return write


@pytest.fixture(scope="session")
def trained_texts(tokenizer) -> Callable[[RenderedSample], list[str]]:
    """``trained_texts(sample)``: the decoded text of each run of consecutive trained tokens.

    Found here from the labels alone (not with ``render.trained_runs``), so it checks the renderer."""

    def texts(sample: RenderedSample) -> list[str]:
        out, run_ids = [], []
        for i, label in enumerate([*sample.labels, IGNORE_INDEX]):
            if label != IGNORE_INDEX:
                run_ids.append(sample.input_ids[i])
            elif run_ids:
                out.append(tokenizer.decode(run_ids))
                run_ids = []
        return out

    return texts
