"""Preference builds: every pair accounted for, both sides rendered exactly as SFT renders them alone,
packed into one row with positions restarting at each side; drops with reasons; config refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from data_recipes.build import build
from data_recipes.messages import SampleError
from data_recipes.mixture import MixtureConfig, SourceConfig, load_mixture
from data_recipes.preference import SIDES, split_pair
from data_recipes.recipes import RECIPES
from data_recipes.recipes.common import RecipeOptions, apply_label_rules
from data_recipes.render import IGNORE_INDEX, RenderOptions, render

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "data" / "sample-preference.yaml"
Q = [{"role": "user", "content": "What is the capital of France?"}]
A = {"role": "assistant", "content": "Paris."}
B = {"role": "assistant", "content": "Rome."}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("pref") / "ds"
    result = build(load_mixture(CONFIG), out, num_proc=1, progress=False)
    return result.manifest, load_from_disk(str(out))


def test_manifest_accounts_every_pair_and_drop(built):
    manifest, dsd = built
    assert manifest["kind"] == "preference"
    assert manifest["num_samples_in"] == 55
    assert manifest["dropped"] == {
        "bad_prompt": 1, "identical_sides": 1, "missing_side": 1, "prompt_mismatch": 1, "side_ends_on_user": 1,
    }  # fmt: skip
    assert manifest["num_samples_kept"] == 50
    assert manifest["drop_examples"]["missing_side"] == ["data_recipes/samples/preference_plain.jsonl:13"]
    pairs = sum(split["num_pairs"] for split in manifest["splits"].values())
    assert pairs == manifest["num_samples_out"] == 50
    assert sum(len(dsd[s]) for s in dsd) == manifest["num_rows"]


def test_rows_hold_whole_pairs_with_positions_restarting_per_side(built):
    _, dsd = built
    for row in dsd["train"]:
        lengths = row["seq_lengths"]
        assert len(lengths) % 2 == 0 and sum(lengths) == len(row["input_ids"]) <= 2048
        expected_pos = np.concatenate([np.arange(n) for n in lengths])
        assert row["position_ids"] == expected_pos.tolist()
        starts = np.cumsum([0, *lengths[:-1]])
        for k in range(0, len(lengths), 2):  # both sides of a pair share the prompt tokens
            c = row["input_ids"][starts[k] : starts[k] + lengths[k]]
            r = row["input_ids"][starts[k + 1] : starts[k + 1] + lengths[k + 1]]
            c_lab = row["labels"][starts[k] : starts[k] + lengths[k]]
            first = next(i for i, x in enumerate(c_lab) if x != IGNORE_INDEX)
            assert c[:first] == r[:first]


def test_sides_render_exactly_like_sft_samples(built, tokenizer):
    """Each packed side equals rendering that side's conversation alone with the recipe (golden: SFT path)."""
    _, dsd = built
    path = REPO / "data_recipes" / "samples" / "preference_tools.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    _, chosen, rejected = split_pair(row, "x")
    preps = [RECIPES["tool_use"](c, RecipeOptions(), "last", tokenizer) for c in (chosen, rejected)]
    thinking = preps[0].thinking or preps[1].thinking
    alone = [apply_label_rules(render(p.conv, tokenizer, RenderOptions(thinking=thinking)), p) for p in preps]
    pair_ids = alone[0].input_ids + alone[1].input_ids
    found = False
    for split in dsd.values():
        for packed in split:
            starts = np.cumsum([0, *packed["seq_lengths"]])
            for k in range(0, len(packed["seq_lengths"]), 2):
                ids = packed["input_ids"][starts[k] : starts[k + 2]]
                if ids == pair_ids:
                    assert packed["labels"][starts[k] : starts[k + 2]] == alone[0].labels + alone[1].labels
                    found = True
    assert found
    decoded = tokenizer.decode([t for t in alone[0].labels if t != IGNORE_INDEX])
    assert "<tool_call>" in decoded and "<think>" in decoded and "tool_response" not in decoded


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": Q, "chosen": [A]}, "missing_side"),
        ({"prompt": "hi", "chosen": [A], "rejected": [B]}, "bad_prompt"),
        ({"prompt": [Q[0], "x"], "chosen": [A], "rejected": [B]}, "bad_prompt"),
        ({"prompt": Q, "chosen": [A], "rejected": [B, Q[0]]}, "side_ends_on_user"),
        ({"chosen": [*Q, A], "rejected": [{"role": "user", "content": "Other?"}, B]}, "prompt_mismatch"),
        ({"prompt": Q, "chosen": [A], "rejected": [dict(A)]}, "identical_sides"),
        ({"chosen": [A], "rejected": [B]}, "no_user_turn"),
        ({"prompt": Q, "chosen": [A], "rejected": [{"role": "robot", "content": "x"}]}, "unknown_role"),
    ],
)
def test_bad_pairs_are_refused_with_a_reason(row, reason):
    with pytest.raises(SampleError) as err:
        split_pair(row, "f.jsonl:3")
    assert err.value.reason == reason and err.value.origin == "f.jsonl:3"


def test_both_prompt_formats_give_the_same_pair():
    a = split_pair({"prompt": Q, "chosen": [A], "rejected": [B]})
    b = split_pair({"chosen": [*Q, A], "rejected": [*Q, B]})
    assert a[1:] == b[1:] and (a[0], b[0]) == ("prompt", "full")


def test_side_without_trained_tokens_and_overlong_pairs_are_dropped(tmp_path):
    rows = [
        {"prompt": Q, "chosen": [A], "rejected": [B], "score_chosen": 9.0, "prompt_id": ""},
        {"prompt": Q, "chosen": [{"role": "assistant", "content": "Paris. " * 60}], "rejected": [B]},
        {"prompt": Q, "chosen": [A], "rejected": [{"role": "assistant", "content": "<think>x</think>Rome."}]},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = MixtureConfig(
        sources=[SourceConfig(path=str(path), recipe="plain")], kind="preference", max_seq_len=160,
        validation_fraction=0.0,
    )  # fmt: skip
    manifest = build(cfg, tmp_path / "out", num_proc=1, progress=False).manifest
    assert manifest["num_samples_kept"] == 1
    assert manifest["dropped"] == {"too_long": 1, "unexpected_reasoning": 1}
    assert "rejected side" in manifest["drop_details"]["unexpected_reasoning"][0]
    assert manifest["ignored_fields"] == {"score_chosen": 1}  # UltraFeedback-style extras are reported


def test_preference_config_refusals(tmp_path):
    src = [SourceConfig(path="x.jsonl", recipe="plain")]
    with pytest.raises(ValueError, match="expand"):
        MixtureConfig(sources=src, kind="preference", history="expand")
    with pytest.raises(ValueError, match="format"):
        MixtureConfig(
            sources=[SourceConfig(path="x.jsonl", recipe="plain", format="sharegpt")], kind="preference"
        )
    assert SIDES == ("chosen", "rejected")
