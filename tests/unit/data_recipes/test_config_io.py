"""Typed YAML configs: unknown keys rejected, types checked, dotted overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from data_recipes.config_io import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-5
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Source:
    path: str
    weight: float = 1.0


@dataclass
class Cfg:
    name: str = "run"
    steps: int = 10
    history: Literal["last", "expand", "keep"] = "last"
    tokenizer: str | None = None
    optim: Optim = field(default_factory=Optim)
    sources: list[Source] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def test_loads_nested_and_applies_dotted_overrides(write_config):
    p = write_config(
        "# test config\nsteps: 5\noptim:\n  lr: 2.0e-5\nsources:\n  - path: a.jsonl\n    weight: 2\n",
    )
    cfg = load_config(Cfg, p, ["optim.lr=1e-4", "history=keep", "tokenizer=null", "sources.0.weight=3"])
    assert cfg.steps == 5 and cfg.optim.lr == 1e-4 and cfg.history == "keep" and cfg.tokenizer is None
    assert cfg.sources == [Source(path="a.jsonl", weight=3.0)]  # a number indexes a list


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("stepz: 5\n", [], r"unknown key\(s\) \['stepz'\]"),
        ("optim:\n  lr: fast\n", [], r"optim\.lr: expected a number, got 'fast'"),
        ("steps: 1.5\n", [], r"steps: expected an integer"),
        ("history: all\n", [], r"history: 'all' is not one of"),
        ("sources:\n  - weight: 1\n", [], r"sources\[0\]\.path: required key is missing"),
        ("steps: 1\n", ["optim"], "expected key=value"),
        ("- 1\n- 2\n", [], "top level must be a mapping"),
        ("steps: [1\n", [], "invalid YAML"),
        ("steps: 1\n", ["steps=[1"], r"override 'steps=\[1': the value is not valid YAML"),
        ("optim:\n  lr: .nan\n", [], r"optim\.lr: nan is not a finite number"),
        ("steps: 1\n", ["optim.lr=inf"], r"optim\.lr: inf is not a finite number"),
        ("steps: 1\n", ["optim.betas=[0.9, .inf]"], r"optim\.betas\[1\]: inf is not a finite number"),
        ("extra:\n  a: {b: [1, .nan]}\n", [], r"extra\.a\.b\[1\]: nan is not a finite number"),
        (
            "history: expnad\n",
            [],
            r"'expnad' is not one of \['last', 'expand', 'keep'\] \(did you mean 'expand'\?\)",
        ),
        ("sources:\n  - path: a\n", ["sources.3.weight=1"], r"3 is not an index of a 1-item list"),
    ],
)
def test_rejects_bad_configs_with_file_and_key(write_config, text, overrides, message):
    p = write_config(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Cfg, p, overrides)
    assert str(info.value).startswith((f"{p}: ", "override "))


def test_yaml11_exponent_strings_are_numbers(write_config):
    assert load_config(Cfg, write_config("optim:\n  lr: 1e-5\n")).optim.lr == 1e-5


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
