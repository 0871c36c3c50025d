"""``hermes-sft verify`` reports the serving round trip, and fails a template that breaks it."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from train.export.verify.report import FAIL, PASS, VerifyReport
from train.export.verify.serving import check_round_trip
from train.export.writing.folder import write_tokenizer


def _exported(folder: Path, edit=None):
    write_tokenizer(folder, None)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if edit is not None:
        tok.chat_template = edit(tok.chat_template)
    return tok


def test_round_trip_row_passes_for_the_exported_tokenizer(tmp_path):
    report = VerifyReport(tmp_path, "bf16", None)
    check_round_trip(report, _exported(tmp_path))
    row = report.check("round_trip")
    assert row.status == PASS, row.detail
    assert "vllm hermes + qwen3 20/20" in row.detail and "sglang qwen25 + qwen3 20/20" in row.detail
    assert "vllm hermes + deepseek_r1 10/20" in row.detail  # reported, not judged
    assert report.rows_for_card()[0][:2] == ("round_trip", "PASS")


def test_round_trip_row_fails_a_template_that_does_not_trim(tmp_path):
    untrimmed = _exported(
        tmp_path,
        lambda t: t.replace("{%- set reasoning = reasoning | trim -%}", "").replace(
            "{%- set content = content | trim -%}", ""
        ),
    )
    report = VerifyReport(tmp_path, "bf16", None)
    check_round_trip(report, untrimmed)
    row = report.check("round_trip")
    assert row.status == FAIL
    assert (
        "vllm hermes + qwen3 / reasoning + call: re-rendered as '<think>\\n\\nNeed the forecast."
        in row.detail
    )


def test_round_trip_row_fails_a_template_that_cannot_render_the_cases(tmp_path):
    report = VerifyReport(tmp_path, "bf16", None)
    check_round_trip(report, _exported(tmp_path, lambda t: "{{ messages }}"))
    row = report.check("round_trip")
    assert row.status == FAIL and "the template cannot render the cases" in row.detail
