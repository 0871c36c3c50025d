"""The builder in process: exact accounting on a corpus with every defect, packed-row invariants,
every kept sample exactly once, mixing counts, determinism, --strict, expand counting."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from data_recipes.build import build
from data_recipes.formats.detect import to_conversation
from data_recipes.messages import SampleError
from data_recipes.mixture import load_mixture
from data_recipes.recipes import RECIPES
from data_recipes.recipes.common import RecipeOptions, apply_label_rules
from data_recipes.render import render_batch
from data_recipes.tokenizer import BOS_ID

REPO = Path(__file__).resolve().parents[3]
BAD = REPO / "tests" / "data" / "bad" / "bad.yaml"
SAMPLES = REPO / "data_recipes" / "samples"

EXPECTED_DROPS = {
    "malformed_json": 1, "no_messages": 1, "unknown_role": 2, "empty_conversation": 1, "bad_think_tags": 2,
    "missing_reasoning": 1, "duplicate": 2, "too_long": 1, "no_trained_tokens": 1, "undeclared_tool": 2,
    "bad_tool_arguments": 2, "schema_mismatch": 1, "invalid_schema": 1, "answer_not_json": 1, "no_schema": 1,
}  # fmt: skip


def do_build(tmp_path, config, name="out", overrides=(), **kw):
    out = tmp_path / name
    result = build(load_mixture(config, list(overrides)), out, num_proc=1, progress=False, **kw)
    return result.manifest, load_from_disk(str(out))


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
    return do_build(tmp_path_factory.mktemp("bad"), BAD)


def test_every_defect_is_counted_with_its_origin(bad_build):
    manifest, _ = bad_build
    assert manifest["dropped"] == EXPECTED_DROPS
    assert manifest["num_inputs"] == manifest["num_samples_in"] == 23
    assert manifest["num_samples_kept"] == 3
    assert manifest["num_samples_in"] == manifest["num_samples_kept"] + sum(manifest["dropped"].values())
    examples = manifest["drop_examples"]
    assert examples["malformed_json"] == ["tests/data/bad/reasoning.jsonl:2"]
    assert examples["bad_think_tags"] == [
        "tests/data/bad/reasoning.jsonl:6",
        "tests/data/bad/reasoning.jsonl:7",
    ]
    assert examples["too_long"] == ["tests/data/bad/reasoning.jsonl:10"]
    assert examples["undeclared_tool"] == ["tests/data/bad/tools.jsonl:2", "tests/data/bad/hermes_fc.jsonl:3"]
    # the Hermes-FC row renders to exactly the OpenAI tools row: a cross-format duplicate
    assert examples["duplicate"] == ["tests/data/bad/reasoning.jsonl:9", "tests/data/bad/hermes_fc.jsonl:1"]
    assert "'three' is not of type 'integer'" in manifest["drop_details"]["schema_mismatch"][0]
    per = manifest["per_source"]
    assert {k: (v["num_samples_in"], v["num_samples_kept"]) for k, v in per.items()} == {
        "reasoning": (11, 1), "tools": (4, 1), "json_schema": (5, 1), "hermes_fc": (3, 0),
    }  # fmt: skip
    for v in per.values():
        assert v["num_samples_in"] == v["num_samples_kept"] + sum(v["dropped"].values())
    assert per["hermes_fc"]["formats_detected"] == {"hermes_fc": 3}
    assert per["reasoning"]["formats_detected"] == {"openai": 9, "unknown": 2}  # malformed, no_messages


def test_strict_and_overlong_error(tmp_path):
    with pytest.raises(ValueError, match=r"--strict: 20 sample\(s\) would be dropped") as err:
        do_build(tmp_path, BAD, strict=True)
    assert "malformed_json: 1 (first: tests/data/bad/reasoning.jsonl:2" in str(err.value)
    with pytest.raises(ValueError, match=r"overlong: error: 1 sample\(s\)") as err:
        do_build(tmp_path, BAD, overrides=["overlong=error"])
    assert "too_long" in str(err.value) and "malformed_json" not in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_missing_source_fails_before_work(tmp_path, write_config):
    cfg = write_config("sources:\n  - {path: nope.jsonl, recipe: plain}\n")
    with pytest.raises(ValueError, match=r"nope\.jsonl: file not found"):
        do_build(tmp_path, cfg)
    assert not list(tmp_path.glob("out*"))


def unpack(split):
    """Every sample of every packed row, as (ids, labels) tuples, checking row invariants."""
    samples = []
    for row in split:
        ids, labels, pos, lens = row["input_ids"], row["labels"], row["position_ids"], row["seq_lengths"]
        assert len(ids) == len(labels) == len(pos) == sum(lens) <= 512
        start = 0
        for n in lens:
            assert pos[start : start + n] == list(range(n))  # positions restart for every sample
            assert ids[start] == BOS_ID and labels[start] == -100  # no target crosses into this sample
            samples.append((tuple(ids[start : start + n]), tuple(labels[start : start + n])))
            start += n
    return samples


def reference_samples(tokenizer, files_and_recipes):
    """The same samples rendered one by one through the public API (dedup by content)."""
    seen = {}
    for path, recipe in files_and_recipes:
        for line in path.read_text().splitlines():
            try:
                _, conv = to_conversation(json.loads(line), "auto", "x")
                prepared = RECIPES[recipe](conv, RecipeOptions(), "last", tokenizer)
            except SampleError:
                continue
            (s,) = render_batch([prepared.conv], tokenizer, prepared.options)
            s = apply_label_rules(s, prepared)
            seen.setdefault((tuple(s.input_ids), tuple(s.labels)), None)
    return list(seen)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    cfg = folder / "small.yaml"
    cfg.write_text(
        "max_seq_len: 512\nvalidation_fraction: 0.1\nseed: 3\nsources:\n"
        f"  - {{name: r, path: {SAMPLES / 'reasoning.jsonl'}, recipe: reasoning}}\n"
        f"  - {{name: p, path: {SAMPLES / 'plain.jsonl'}, recipe: plain}}\n"
    )
    return cfg


def test_every_kept_sample_is_packed_exactly_once(tmp_path, small_config, tokenizer):
    manifest, data = do_build(tmp_path, small_config)
    packed = unpack(data["train"]) + unpack(data["validation"])
    reference = reference_samples(
        tokenizer, [(SAMPLES / "reasoning.jsonl", "reasoning"), (SAMPLES / "plain.jsonl", "plain")]
    )
    assert collections.Counter(packed) == collections.Counter(reference)  # each exactly once, none altered
    assert manifest["num_samples_kept"] == manifest["num_samples_out"] == len(reference)
    assert manifest["splits"]["validation"]["num_samples"] == round(0.1 * 77) + round(0.1 * 59)
    tokens = sum(len(ids) for ids, _ in packed)
    assert manifest["num_tokens"] == tokens
    assert manifest["num_trained_tokens"] == sum(sum(t != -100 for t in labels) for _, labels in packed)
    rows = len(data["train"]) + len(data["validation"])
    assert manifest["num_rows"] == rows and manifest["packing_efficiency"] == pytest.approx(
        tokens / (rows * 512)
    )


def test_same_seed_same_dataset_other_seed_other_order(tmp_path, small_config):
    _, a = do_build(tmp_path, small_config, "a")
    _, b = do_build(tmp_path, small_config, "b")
    _, c = do_build(tmp_path, small_config, "c", overrides=["seed=4"])
    assert a["train"]["input_ids"] == b["train"]["input_ids"] and a["train"]["labels"] == b["train"]["labels"]
    assert a["train"]["input_ids"] != c["train"]["input_ids"]


def test_sample_config_mixing_counts(tmp_path):
    manifest, data = do_build(tmp_path, REPO / "configs" / "data" / "sample.yaml")
    per = manifest["per_source"]
    assert per["plain"]["num_samples_out"] == round(0.5 * per["plain"]["num_samples_kept"])
    openai_tools = per[
        "tools-openai"
    ]  # weight 2: train copies twice; a validation sample once, never in train
    assert (
        openai_tools["num_samples_out"]
        == 2 * openai_tools["num_samples_kept"] - openai_tools["num_validation"]
    )
    assert per["json-schema"]["num_samples_out"] == per["json-schema"]["num_samples_selected"] == 30
    assert per["length-control"]["num_length_cut"] > 0
    assert {k for v in per.values() for k in v["formats_detected"]} == {"openai", "sharegpt", "hermes_fc"}
    for key in ("format_version", "max_seq_len", "seed", "tokenizer_fingerprint", "template_fingerprint",
                "config_hash", "num_samples_in", "num_samples_kept", "dropped", "drop_examples", "num_rows",
                "num_tokens", "num_trained_tokens", "packing_efficiency", "per_source", "splits"):  # fmt: skip
        assert key in manifest
    assert sum(len(r) for r in data["train"]["seq_lengths"]) == manifest["splits"]["train"]["num_samples"]


def test_expand_counts_inputs_and_samples_separately(tmp_path, write_config, write_jsonl):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"},
                      {"role": "user", "content": "and?"}, {"role": "assistant", "content": f"b{i}"}]}
        for i in range(4)
    ] + [{"nothing": 1}]  # fmt: skip
    write_jsonl("multi.jsonl", rows)
    cfg = write_config(
        "history: expand\nvalidation_fraction: 0\nmax_seq_len: 1024\nsources:\n  - {path: multi.jsonl, recipe: plain}\n"
    )
    manifest, data = do_build(tmp_path, cfg)
    assert (
        manifest["num_inputs"] == 5 and manifest["num_samples_in"] == 9 and manifest["num_samples_kept"] == 8
    )
    assert manifest["dropped"] == {"no_messages": 1}
    assert manifest["drop_examples"]["no_messages"] == [
        f"{Path(tmp_path / 'multi.jsonl')}:5".replace(str(Path.cwd()) + "/", "")
    ]
    trained = [np.asarray(lab)[np.asarray(lab) != -100] for lab in data["train"]["labels"]]
    assert sum(len(t) for t in trained) == manifest["num_trained_tokens"]
