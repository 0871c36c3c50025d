"""Readers stream rows with file:line origins; bad sources are clear errors before any work."""

from __future__ import annotations

import json

import pytest

from data_recipes import sources
from data_recipes.sources import iter_rows, resolve


def rows(path, **kw):
    return list(iter_rows(resolve(str(path), **kw)))


def test_jsonl_keeps_line_numbers_and_passes_malformed_lines_on(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n{broken\n{"b": 2}\n')
    out = rows(p)
    assert [o.rsplit(":", 1)[1] for o, _ in out] == ["1", "3", "4"]
    assert out[1][1].strip() == "{broken"


def test_json_array_streams_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_CHARS", 7)
    p = tmp_path / "a.json"
    p.write_text('[\n  {"a": "x,y]"},\n  {"b":\n   2},\n  {"c": 3}\n]\n')
    out = rows(p)
    assert [json.loads(t) for _, t in out] == [{"a": "x,y]"}, {"b": 2}, {"c": 3}]
    assert [o.rsplit(":", 1)[1] for o, _ in out] == ["2", "3", "5"]


def test_json_array_with_a_broken_element_reports_it(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[{"a": 1},\n {"b": 2,,},\n {"c": 3}]')
    out = rows(p)
    assert [o.rsplit(":", 1)[1] for o, _ in out] == ["1", "2", "3"]
    assert json.loads(out[0][1]) == {"a": 1} and json.loads(out[2][1]) == {"c": 3}
    with pytest.raises(json.JSONDecodeError):
        json.loads(out[1][1])


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_json_array_elements_after_a_broken_one_are_still_read(tmp_path, monkeypatch, chunk):
    """Issue 13: 100 elements, #50 broken → 100 rows (one malformed), not 50 and a silent stop."""
    monkeypatch.setattr(sources, "CHUNK_CHARS", chunk)
    elements = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}, indent=2) for i in range(100)
    ]
    elements[49] = '{\n  "messages": [ broken'
    p = tmp_path / "a.json"
    p.write_text("[\n" + ",\n".join("  " + e.replace("\n", "\n  ") for e in elements) + "\n]\n")
    out = rows(p)
    assert len(out) == 100
    parsed = []
    for _, text in out:
        try:
            parsed.append(json.loads(text)["messages"][0]["content"])
        except json.JSONDecodeError:
            parsed.append(None)
    assert parsed == [f"q{i}" if i != 49 else None for i in range(100)]
    starts = [int(o.rsplit(":", 1)[1]) for o, _ in out]
    assert starts == sorted(starts) and starts[0] == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1}, {"b": 2,,}, {"c": 3}]', r"a\.json:1: malformed element .*one-line array"),
        ('[\n {"a": 1},\n {"b": 2}', r"a\.json:3: the JSON array is not closed"),
        ('[\n {"a": 1},\n {"b": ', r"a\.json:3: malformed element"),
        ('[\n {"a": 1}\n]\n{"b": 2}', r"a\.json:3: content after the end"),
    ],
)
def test_json_array_that_cannot_be_read_to_its_end_is_refused(tmp_path, text, message):
    p = tmp_path / "a.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        rows(p)


def test_json_lines_with_json_extension(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"a": 1}\n{"b": 2}\n')
    assert len(rows(p)) == 2


def test_parquet_and_datasets_folder_keep_mixed_schemas(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"messages": [json.dumps([{"role": "user", "content": "q"}])] * 3, "tools": ["[]", "", "[]"]}
    )
    pq.write_table(table, tmp_path / "a.parquet")
    out = rows(tmp_path / "a.parquet")
    assert [o.rsplit(":", 1)[1] for o, _ in out] == ["1", "2", "3"] and json.loads(out[1][1])["tools"] == ""
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1, 2]})}).save_to_disk(
        str(tmp_path / "ds")
    )
    assert [json.loads(t) for _, t in rows(tmp_path / "ds")] == [{"x": 1}, {"x": 2}]
    with pytest.raises(ValueError, match="no split 'test'"):
        resolve(str(tmp_path / "ds"), split="test")


def test_bad_sources_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"missing\.jsonl: file not found"):
        resolve(str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        resolve(str(tmp_path / "a.csv"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="save_to_disk"):
        resolve(str(tmp_path / "empty_dir"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable parquet"):
        resolve(str(tmp_path / "bad.parquet"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"hub:org/name: the Hub is offline \(HF_DATASETS_OFFLINE=1\)"):
        resolve(hub="org/name")
