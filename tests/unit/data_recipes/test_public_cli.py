"""`render`, `inspect` and `data build` read the public shapes alike: the format detected per row (or
forced with --format), preference rows refused with their reason, unused columns announced."""

from __future__ import annotations

import json
from pathlib import Path

from data_recipes.build import build
from data_recipes.mixture import load_mixture
from train.cli import main

PUBLIC = Path(__file__).resolve().parents[2] / "data" / "public"


def test_render_prints_rendered_rows_of_a_sharegpt_file(tmp_path, capsys):
    src = tmp_path / "mixed.jsonl"
    names = ("openhermes", "bespoke_stratos", "hermes_func_calling", "trl_prompt_completion")
    src.write_text("".join((PUBLIC / f"{n}.jsonl").read_text() for n in names))
    assert main(["render", str(src)]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["origin"] for line in lines] == [f"{src}:{i}" for i in range(1, 6)]
    assert "11 is a prime number above 10.<|eot_id|>" in lines[0]["text"]
    assert "<think>\nOkay, 6 times 7" in lines[1]["text"]
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        in lines[2]["text"]
    )
    assert all(line["labels"][-1] == 128009 for line in lines)
    assert "rendered 5 samples from 5 rows; dropped 0 (none)" in err
    assert "columns no reader used (rows): skip_prompt_formatting: 1, source: 1" in err


def test_render_refuses_preference_rows_and_format_forces_a_reading(capsys):
    src = PUBLIC / "ultrafeedback_binarized.jsonl"
    assert main(["render", str(src)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        "ultrafeedback_binarized.jsonl:1: preference_row: a preference pair ('chosen'/'rejected' columns"
        in err
    )
    assert "dropped 1 (preference_row: 1)" in err
    assert main(["render", str(src), "--format", "openai"]) == 0
    out, err = capsys.readouterr()
    assert "Red is a primary colour.<|eot_id|>" in json.loads(out)["text"]
    assert "chosen: 1" in err and "rejected: 1" in err and "score_chosen: 1" in err


def test_inspect_reads_hermes_rows(capsys):
    assert main(["inspect", "--no-color", str(PUBLIC / "hermes_func_calling.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "not renderable" not in out
    assert (
        '⟦<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|eot_id|>⟧' in out
    )


def test_data_build_reads_public_shapes_and_counts_ignored_fields(tmp_path):
    config = tmp_path / "public.yaml"
    config.write_text(
        f"""max_seq_len: 1024
validation_fraction: 0.0
sources:
  - {{name: json_mode, path: {PUBLIC / "hermes_json_mode.jsonl"}, recipe: json_schema}}
  - {{name: stratos, path: {PUBLIC / "bespoke_stratos.jsonl"}, recipe: reasoning}}
  - {{name: openhermes, path: {PUBLIC / "openhermes.jsonl"}, recipe: plain}}
  - {{name: trl, path: {PUBLIC / "trl_prompt_completion.jsonl"}, recipe: plain}}
  - {{name: prefs, path: {PUBLIC / "trl_preference.jsonl"}, recipe: plain}}
  - {{name: uf_sft, path: {PUBLIC / "ultrafeedback_binarized.jsonl"}, recipe: plain, format: openai}}
"""
    )
    manifest = build(load_mixture(config), tmp_path / "out", num_proc=1, progress=False).manifest
    per = manifest["per_source"]
    assert {k: (v["num_samples_in"], v["num_samples_kept"]) for k, v in per.items()} == {
        "json_mode": (1, 1), "stratos": (1, 1), "openhermes": (1, 1), "trl": (2, 2), "prefs": (2, 0),
        "uf_sft": (1, 1),
    }  # fmt: skip
    assert manifest["dropped"] == {"preference_row": 2}
    assert per["trl"]["formats_detected"] == {"prompt_completion": 2}
    assert per["json_mode"]["ignored_fields"] == {"category": 1, "id": 1, "subcategory": 1, "task": 1}
    assert per["stratos"]["ignored_fields"] == {}
    assert per["uf_sft"]["ignored_fields"] == {
        "chosen": 1, "prompt": 1, "prompt_id": 1, "rejected": 1, "score_chosen": 1, "score_rejected": 1,
    }  # fmt: skip
    assert manifest["ignored_fields"]["category"] == 1 and manifest["ignored_fields"]["source"] == 1
