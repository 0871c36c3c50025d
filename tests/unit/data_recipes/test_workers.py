"""The render stage's workers and checks at build level: the same dataset whatever the worker count and
check mode, the audit's deterministic share, the default worker count."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import load_from_disk

from data_recipes.build import RAW_SCHEMA, build, default_num_proc
from data_recipes.checks import AuditError, audit, is_audited
from data_recipes.messages import conversation_from_openai
from data_recipes.mixture import load_mixture
from data_recipes.pipeline import SourceRules, WorkerContext
from data_recipes.recipes.common import RecipeOptions
from data_recipes.render import RenderOptions, render
from data_recipes.workers import BATCH_ROWS, render_records, task_ranges

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "configs" / "data" / "sample.yaml"
VOLATILE = ("timings_s", "num_proc", "render", "config", "config_hash")


def built(tmp_path: Path, name: str, num_proc: int, *overrides: str):
    result = build(load_mixture(SAMPLE, list(overrides)), tmp_path / name, num_proc=num_proc, progress=False)
    return result.manifest, load_from_disk(str(tmp_path / name))


def test_full_checks_and_two_workers_give_the_default_build(tmp_path):
    default_manifest, default = built(tmp_path, "default", 1)
    full_manifest, full = built(tmp_path, "full", 2, "check=full")
    off_manifest, off = built(tmp_path, "off", 2, "check=false")
    for other in (full, off):
        for split in ("train", "validation"):
            assert other[split].to_dict() == default[split].to_dict()  # same ids, labels, rows, order
    same = {k: v for k, v in default_manifest.items() if k not in VOLATILE}
    assert {k: v for k, v in full_manifest.items() if k not in VOLATILE} == same
    assert {k: v for k, v in off_manifest.items() if k not in VOLATILE} == same
    assert full_manifest["render"]["num_audited"] >= full_manifest["num_samples_kept"]  # every rendered one
    assert 0 < default_manifest["render"]["num_audited"] < full_manifest["render"]["num_audited"]
    assert off_manifest["render"] == {"check": "off", "check_rate": None, "num_audited": 0, "num_fallback": 0}
    assert default_manifest["render"]["num_fallback"] == 0  # every bundled sample is cut provably safely


def test_the_audit_share_is_a_deterministic_function_of_the_text():
    texts = [f"sample {i}" for i in range(20_000)]
    picked = [t for t in texts if is_audited(t, "sample", 0.01)]
    assert 150 < len(picked) < 250  # ~1 %
    assert picked == [t for t in texts if is_audited(t, "sample", 0.01)]
    assert all(is_audited(t, "full", 0.01) for t in texts[:100])
    assert not any(is_audited(t, "off", 1.0) for t in texts[:100])


def test_an_audit_failure_names_the_sample_and_stops(tokenizer):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    conv = conversation_from_openai(row, "data/chat.jsonl:12")
    sample = render(conv, tokenizer, RenderOptions())
    audit([(conv, sample)], tokenizer, RenderOptions())  # a correct sample passes
    shifted = sample.labels[1:] + sample.labels[:1]
    with pytest.raises(AuditError, match=r"data/chat.jsonl:12: the render audit failed \(label_mismatch"):
        audit([(conv, type(sample)(sample.input_ids, shifted, sample.text, sample.origin, sample.spans))],
              tokenizer, RenderOptions())  # fmt: skip


def test_tasks_cover_every_row_once_in_whole_batches():
    for rows, procs in [(0, 2), (1, 1), (127, 2), (15_000, 2), (1_000_003, 64)]:
        tasks = task_ranges(rows, procs)
        assert tasks[0][0] == 0 and tasks[-1][1] == rows
        assert all(a[1] == b[0] for a, b in pairwise(tasks))
        assert all((stop - start) % BATCH_ROWS == 0 for start, stop in tasks[:-1])
    assert len(task_ranges(15_000, 2)) >= 16  # enough tasks to balance two workers


def test_default_workers_are_the_cpus_this_process_may_use(monkeypatch):
    allowed = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert default_num_proc() == allowed
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert default_num_proc() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(allowed + 8))  # never more than the affinity allows
    assert default_num_proc() == allowed


def test_an_error_in_a_worker_stops_the_stage(tmp_path):
    """What an audit failure does in a worker process: the parent raises it, no partial result."""
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 600
    raw = tmp_path / "raw.arrow"
    with pa.OSFile(str(raw), "wb") as sink, pa.ipc.new_stream(sink, RAW_SCHEMA) as writer:
        table = {"source": [0] * 599 + [7], "origin": [f"x.jsonl:{i + 1}" for i in range(600)],
                 "raw": [json.dumps(r) for r in rows]}  # fmt: skip
        writer.write_table(pa.table(table, schema=RAW_SCHEMA))
    ctx = WorkerContext((SourceRules("openai", "plain", RecipeOptions()),), "last", None)  # no source 7
    with pytest.raises(IndexError):
        render_records(raw, tmp_path / "records", ctx, num_proc=2, progress=False)
    ok = render_records(raw, tmp_path / "ok", replace(ctx, sources=ctx.sources * 8), 2, progress=False)
    assert ok["origin"] == [f"x.jsonl:{i + 1}" for i in range(600)]  # in input order
