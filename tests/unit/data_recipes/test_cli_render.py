"""The foundation CLI: render / inspect / tokenizer through the real dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from train.cli import main

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
MULTI = {
    "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "reasoning_content": "r", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
}


def test_render_writes_one_json_line_per_sample(write_jsonl, capsys, tokenizer):
    src = write_jsonl("in.jsonl", [GOOD, MULTI])
    assert main(["render", str(src), "--history", "expand"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3  # GOOD + two replies of MULTI
    first = lines[0]
    assert set(first) == {"text", "input_ids", "labels", "origin"}
    assert first["input_ids"] == tokenizer(first["text"])["input_ids"]
    assert [t for t, lab in zip(first["input_ids"], first["labels"], strict=True) if lab != -100] == [
        9906,
        0,
        128009,
    ]
    assert lines[1]["origin"].endswith("in.jsonl:2#reply0")
    assert "rendered 3 samples from 2 rows; dropped 0" in err


def test_render_reports_bad_rows_with_file_line_and_reason(write_jsonl, capsys):
    bad_role = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    src = write_jsonl("in.jsonl", [GOOD, "{not json", bad_role, GOOD])
    assert main(["render", str(src)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert (
        f"{src}:2: malformed_json: Expecting property name" in err  # the builder's wording
        and f"{src}:3: unknown_role: role 'robot'" in err
    )
    assert "dropped 2 (malformed_json: 1, unknown_role: 1)" in err
    assert main(["render", str(src), "--strict"]) == 2
    assert f"{src}:2: malformed_json" in capsys.readouterr().err


def test_render_drops_unencodable_and_non_utf8_rows_like_the_builder(tmp_path, capsys):
    """Issue 13: a lone surrogate crashed `render` for the whole file, naming no row."""
    src = tmp_path / "in.jsonl"
    surrogate = json.dumps(GOOD).replace("Hello!", "\\ud800").encode()
    latin = json.dumps(GOOD).replace("Hello!", "caf\u00e9").encode("latin-1")
    src.write_bytes(b"\n".join([json.dumps(GOOD).encode(), surrogate, latin]) + b"\n")
    assert main(["render", str(src)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    assert f"{src}:2: unencodable_text: lone surrogate \\ud800" in err
    assert f"{src}:3: invalid_utf8: byte 0xe9" in err


def test_render_flags_thinking_and_keep_cots(write_jsonl, capsys):
    src = write_jsonl("in.jsonl", [MULTI])
    assert main(["render", str(src), "--thinking", "--keep-cots"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["text"].count("You are a deep thinking AI") == 1 and "<think>\nr\n</think>\nb" in line["text"]
    assert main(["render", str(src), "--keep-cots", "--history", "last"]) == 2
    assert "--keep-cots contradicts --history last" in capsys.readouterr().err


def test_render_missing_file_is_one_clear_line(tmp_path, capsys):
    assert main(["render", str(tmp_path / "nope.jsonl")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"hermes-sft render: error: source {tmp_path / 'nope.jsonl'}: file not found"
    )


def test_inspect_marks_trained_tokens(capsys):
    assert main(["inspect", "--no-color", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert "⟦<think>\n91 = 7 x 13" in out and "No. 91 = 7 × 13.<|eot_id|>⟧" in out
    body = out.split("\n", 1)[1]  # after the legend line
    assert "⟦" not in body.split("<|start_header_id|>assistant<|end_header_id|>")[0], (
        "prompt marked as trained"
    )
    assert main(["inspect", "--color", "--index", "0"]) == 0
    assert "\x1b[1;30;42mThe capital of France is Paris.<|eot_id|>\x1b[0m" in capsys.readouterr().out


def test_tokenizer_command_writes_the_three_files(tmp_path, capsys):
    assert main(["tokenizer", "--out", str(tmp_path / "tok")]) == 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        ".hermes-sft-owner.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert "vocab 128256" in capsys.readouterr().out


@pytest.mark.integration
def test_console_script_runs(write_jsonl):
    src = write_jsonl("in.jsonl", [GOOD])
    exe = [sys.executable, "-m", "train.cli"]
    result = subprocess.run(
        [*exe, "render", str(src)], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout)["labels"][-1] == 128009
