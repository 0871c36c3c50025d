"""Mixture config validation and seeded sampling by weight / count, validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_recipes.config_io import ConfigError
from data_recipes.mixture import (
    MixtureConfig,
    SourceConfig,
    config_hash,
    load_mixture,
    sample_counts,
    split_validation,
)


def test_load_resolves_paths_against_the_config_folder(tmp_path, write_config):
    cfg = load_mixture(write_config("sources:\n  - {path: data/a.jsonl, recipe: plain}\n"))
    src = cfg.sources[0]
    assert src.path == str((tmp_path / "data" / "a.jsonl").resolve()) and src.label == "data/a.jsonl"
    assert cfg.max_seq_len == 16384 and cfg.max_tokens == 16384 and cfg.history == "last"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources:\n  - {path: a.jsonl, recipe: plain}\nmax_seq_lenn: 5\n", "unknown key"),
        ("sources:\n  - {path: a.jsonl, recipe: plain, weigth: 2}\n", "unknown key"),
        ("sources:\n  - {path: a.jsonl}\n", "'recipe' is required"),
        (
            "sources:\n  - {path: a.jsonl, recipe: fancy}\n",
            r"recipe: .fancy. is not one of \[.reasoning., .plain.",
        ),
        ("sources:\n  - {path: a.jsonl, hub: x/y, recipe: plain}\n", "exactly one of"),
        ("sources:\n  - {path: a.jsonl, recipe: plain, weight: 1, count: 3}\n", "not both"),
        ("sources:\n  - {path: a.jsonl, recipe: length_control}\n", "budget is required"),
        ("sources:\n  - {path: a.jsonl, recipe: plain, options: {budget: 5}}\n", "budget is required"),
        ("sources:\n  - {path: a.jsonl, recipe: plain, format: csv}\n", "not one of"),
        ("sources:\n  - {path: a.jsonl, recipe: plain}\n  - {path: a.jsonl, recipe: reasoning}\n", "unique"),
        ("sources:\n  - {path: a.jsonl, recipe: plain}\nmax_tokens: 20000\n", "max_tokens"),
        ("sources:\n  - {path: a.jsonl, recipe: plain}\nvalidation_fraction: 1.0\n", "validation_fraction"),
        ("sources: []\n", "at least one source"),
    ],
)
def test_bad_configs_fail_at_load(write_config, text, message):
    with pytest.raises(ConfigError, match=message):
        load_mixture(write_config(text))


def test_overrides_and_hash(write_config):
    path = write_config("sources:\n  - {path: a.jsonl, recipe: plain}\n")
    a, b = load_mixture(path), load_mixture(path, ["seed=1"])
    assert b.seed == 1 and config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(load_mixture(path))


def counts(pool, **kw):
    return sample_counts(pool, SourceConfig(path="x", recipe="plain", **kw), np.random.default_rng(0))


def test_weights_and_counts():
    assert counts(10).tolist() == [1] * 10
    half = counts(10, weight=0.5)
    assert half.sum() == 5 and set(half.tolist()) == {0, 1}
    up = counts(10, weight=2.5)
    assert up.sum() == 25 and sorted(set(up.tolist())) == [2, 3] and (up == 3).sum() == 5
    assert counts(10, weight=0.0).sum() == 0
    assert counts(4, count=10).tolist().count(3) == 2 and counts(4, count=10).sum() == 10
    assert counts(10, count=3).sum() == 3
    assert len(counts(0, weight=2.0)) == 0
    with pytest.raises(ValueError, match="count: 5 asks for 5 samples but none was kept"):
        counts(0, count=5)  # an exact count that cannot be met is an error, not 0 samples
    assert np.array_equal(counts(100, weight=0.37), counts(100, weight=0.37))  # seeded


def test_validation_split():
    train, val = split_validation(np.arange(200), 0.05, np.random.default_rng(1))
    assert val.sum() == 10 and (train ^ val).all()
    assert split_validation(np.arange(10), 0.0, np.random.default_rng(1))[1].sum() == 0


def test_shipped_configs_load(repo_root):
    for path in sorted((repo_root / "configs" / "data").glob("*.yaml")):
        cfg = load_mixture(path)
        assert isinstance(cfg, MixtureConfig)
        for src in cfg.sources:
            assert src.path is None or Path(src.path).is_file(), src.path
