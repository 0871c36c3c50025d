"""Issue 13, data side: every bad-input finding of the fault probe, reproduced and now handled.

One test per cause: the input that used to crash, lose rows or delete data, and what happens now
(a counted drop with ``file:line``, or a clear error before anything is written)."""

from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

import pytest

from data_recipes import build as build_module
from data_recipes.build import build
from data_recipes.config_io import ConfigError
from data_recipes.manifest import read_manifest
from data_recipes.messages import Conversation, Message, SampleError
from data_recipes.mixture import load_mixture
from data_recipes.outdir import MARKER, DiskFullError, OutputRefused
from data_recipes.pipeline import render_guarded
from data_recipes.render import RenderedSample, RenderOptions

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }
    for i in range(30)
]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Origins are written relative to the working folder: run in the test's folder."""
    monkeypatch.chdir(tmp_path)


def write_mix(tmp_path: Path, source: str, extra: str = "", recipe: str = "plain") -> Path:
    config = tmp_path / "mix.yaml"
    config.write_text(
        f"max_seq_len: 512\nvalidation_fraction: 0\n{extra}sources:\n  - path: {source}\n    recipe: {recipe}\n"
    )
    return config


def run_build(tmp_path: Path, config: Path, out: str = "out", overrides=(), **kw):
    cfg = load_mixture(config, list(overrides))
    return build(cfg, tmp_path / out, num_proc=1, progress=False, inputs=[config], **kw).manifest


def jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_lone_surrogate_is_a_counted_drop_with_its_line(tmp_path):
    lines = [json.dumps(r) for r in ROWS]
    lines[5] = (
        '{"messages": [{"role": "user", "content": "bad \\ud800"}, {"role": "assistant", "content": "x"}]}'
    )
    lines[6] = (
        '{"messages": [{"role": "user", "content": "emoji \\ud83d\\ude00"}, {"role": "assistant", "content": "y"}]}'
    )
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    manifest = run_build(tmp_path, write_mix(tmp_path, "rows.jsonl"))
    assert manifest["dropped"] == {"unencodable_text": 1}
    assert manifest["drop_examples"]["unencodable_text"] == ["rows.jsonl:6"]
    assert "lone surrogate \\ud800" in manifest["drop_details"]["unencodable_text"][0]
    assert manifest["num_samples_kept"] == 29  # the valid surrogate pair (an emoji) is kept


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.jsonl.gz"])
def test_bytes_that_are_not_utf8_are_a_drop_of_that_row(tmp_path, name):
    lines = [json.dumps(r).encode() for r in ROWS]
    lines[3] = lines[3].replace(b"question 3", b"caf\xe9 3")  # Latin-1, not UTF-8
    data = b"\n".join(lines) + b"\n" if name != "rows.json" else b"[\n" + b",\n".join(lines) + b"\n]\n"
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    manifest = run_build(tmp_path, write_mix(tmp_path, name))
    assert manifest["dropped"] == {"invalid_utf8": 1}
    assert manifest["drop_details"]["invalid_utf8"] == [
        f"{name}:{4 if name != 'rows.json' else 5}: byte 0xe9 at char 46 is not UTF-8"
    ]
    assert manifest["num_samples_kept"] == 29


def test_a_batch_the_tokenizer_rejects_is_retried_sample_by_sample(tokenizer):
    """The second guard: whatever text the batched tokenizer call rejects costs one sample, not the build."""

    def conv(text: str, origin: str) -> Conversation:
        return Conversation((Message("user", text), Message("assistant", "ok")), origin=origin)

    convs = [conv("fine", "a:1"), conv("bad \ud800", "a:2"), conv("also fine", "a:3")]
    results = render_guarded(convs, tokenizer, RenderOptions())
    assert isinstance(results[0], RenderedSample) and isinstance(results[2], RenderedSample)
    assert isinstance(results[1], SampleError)
    assert (results[1].reason, results[1].origin) == ("tokenizer_error", "a:2")


def test_json_array_with_a_broken_element_counts_it_and_reads_the_rest(tmp_path):
    elements = [json.dumps(r, indent=2).replace("\n", "\n  ") for r in ROWS]
    elements[15] = '{\n    "messages": [ broken'
    (tmp_path / "rows.json").write_text("[\n  " + ",\n  ".join(elements) + "\n]\n")
    manifest = run_build(tmp_path, write_mix(tmp_path, "rows.json"))
    assert manifest["num_inputs"] == 30
    assert manifest["dropped"] == {"malformed_json": 1}
    assert manifest["num_samples_kept"] == 29


def test_empty_source_is_a_clear_error_not_a_key_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"source\(s\) with no rows: empty\.jsonl"):
        run_build(tmp_path, write_mix(tmp_path, "empty.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "mix.yaml"]


def test_truncated_gz_names_the_file(tmp_path):
    data = gzip.compress(jsonl(ROWS * 50).encode())
    (tmp_path / "rows.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError,
        match=r"source rows\.jsonl\.gz: reading failed after rows\.jsonl\.gz:\d+: .*truncated or corrupt",
    ):
        run_build(tmp_path, write_mix(tmp_path, "rows.jsonl.gz"))
    assert not (tmp_path / "out").exists()


def test_message_without_content_is_a_drop_not_an_empty_turn(tmp_path):
    rows = [
        *ROWS[:3],
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}]},
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "z"}]},
    ]
    (tmp_path / "rows.jsonl").write_text(jsonl(rows))
    manifest = run_build(tmp_path, write_mix(tmp_path, "rows.jsonl"))
    assert manifest["dropped"] == {"missing_content": 3}
    assert manifest["drop_examples"]["missing_content"] == ["rows.jsonl:4", "rows.jsonl:5", "rows.jsonl:6"]


def test_count_far_over_the_source_is_refused_with_the_number(tmp_path):
    """The fault probe: `count: 100000000` on a 60-row source wrote without bound (52 GB after 300 s)."""
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    config = write_mix(tmp_path, "rows.jsonl")
    with pytest.raises(ValueError, match=r"count: 100000000 asks for 100,000,000 samples from 30 rows"):
        run_build(tmp_path, config, overrides=["sources.0.count=100000000"])  # refused before rendering
    with pytest.raises(ConfigError, match=r"weight 5000 is over max_repeat: 1000"):
        load_mixture(config, ["sources.0.weight=5000"])  # refused at load (--check)
    manifest = run_build(tmp_path, config, overrides=["sources.0.weight=5000", "max_repeat=5000"])
    assert manifest["num_samples_out"] == 150_000  # the cap is configurable


def test_count_over_the_kept_samples_is_refused_after_the_drops(tmp_path):
    (tmp_path / "rows.jsonl").write_text(jsonl([ROWS[0], *["{broken"] * 29]))
    config = write_mix(tmp_path, "rows.jsonl")
    with pytest.raises(ValueError, match=r"count: 2000 asks for 2,000 samples from 1 kept \(2,000x"):
        run_build(tmp_path, config, overrides=["sources.0.count=2000"])


def test_all_zero_weights_fail_instead_of_writing_an_empty_dataset(tmp_path):
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    with pytest.raises(
        ValueError, match=r"empty training set: 30 sample.* kept, but the mixture selects none"
    ):
        run_build(tmp_path, write_mix(tmp_path, "rows.jsonl"), overrides=["sources.0.weight=0"])
    assert not (tmp_path / "out").exists()


def test_everything_in_validation_fails_naming_the_fraction(tmp_path):
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS[:2]))
    with pytest.raises(
        ValueError, match=r"all 2 selected sample\(s\) went to validation \(validation_fraction: 0\.9"
    ):
        run_build(tmp_path, write_mix(tmp_path, "rows.jsonl"), overrides=["validation_fraction=0.9"])


def test_every_sample_dropped_fails_with_the_reasons(tmp_path):
    (tmp_path / "rows.jsonl").write_text(jsonl(["{broken", {"messages": []}]))
    with pytest.raises(ValueError, match=r"every one of the 2 sample\(s\) was dropped .*malformed_json: 1"):
        run_build(tmp_path, write_mix(tmp_path, "rows.jsonl"))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "1e999"])
def test_non_finite_numbers_in_a_data_config_are_refused(tmp_path, value):
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    config = write_mix(tmp_path, "rows.jsonl")
    config.write_text(
        config.read_text().replace("validation_fraction: 0\n", f"validation_fraction: {value}\n")
    )
    with pytest.raises(ConfigError, match=r"validation_fraction: -?(nan|inf) is not a finite number"):
        load_mixture(config)
    with pytest.raises(ConfigError, match=r"sources\[0\]\.weight: -?(nan|inf) is not a finite number"):
        load_mixture(write_mix(tmp_path, "rows.jsonl"), [f"sources.0.weight={value}"])


@pytest.mark.parametrize(
    ("override", "listed"),
    [
        ("sources.0.recipe=reasonning", r"'reasoning', 'plain'.*did you mean 'reasoning'"),
        ("sources.0.format=sharegtp", r"'openai', 'sharegpt'.*did you mean 'sharegpt'"),
        ("history=expnad", r"\['last', 'expand', 'keep'\].*did you mean 'expand'"),
        ("overlong=truncate", r"\['drop', 'error'\]"),
    ],
)
def test_misspelled_names_list_the_valid_ones(tmp_path, override, listed):
    with pytest.raises(ConfigError, match=listed):
        load_mixture(write_mix(tmp_path, "rows.jsonl"), [override])


def test_overwrite_never_removes_the_builds_own_inputs(tmp_path):
    """The fault probe: `data build CFG --out DIR --overwrite` with CFG and the raw rows inside DIR."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "rows.jsonl").write_text(jsonl(ROWS))
    config = write_mix(project, "rows.jsonl")
    with pytest.raises(OutputRefused, match="holds this command's input"):
        build(load_mixture(config), project, num_proc=1, progress=False, overwrite=True, inputs=[config])
    assert sorted(p.name for p in project.iterdir()) == ["mix.yaml", "rows.jsonl"]


def test_overwrite_replaces_an_earlier_build_only(tmp_path):
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    config = write_mix(tmp_path, "rows.jsonl")
    run_build(tmp_path, config)
    with pytest.raises(OutputRefused, match="not empty: pass --overwrite"):
        run_build(tmp_path, config)
    run_build(tmp_path, config, overwrite=True)
    assert json.loads((tmp_path / "out" / MARKER).read_text())["command"] == "data build"
    (tmp_path / "out" / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputRefused, match=r"did not write \(my_notes\.txt\)"):
        run_build(tmp_path, config, overwrite=True)
    assert (tmp_path / "out" / "my_notes.txt").exists()


def test_disk_full_during_the_build_removes_partial_files_and_says_how_much(tmp_path, monkeypatch):
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    config = write_mix(tmp_path, "rows.jsonl")

    def full(samples, plan, records, lengths, path, progress):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build_module, "write_split", full)  # the fault: ENOSPC while writing rows
    with pytest.raises(
        DiskFullError, match=r"no space left on /\S* while writing --out .*needs ~\d+\.\d (GB|MB)"
    ):
        run_build(tmp_path, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.yaml", "rows.jsonl"]


def test_manifest_fingerprints_the_content_of_every_source(tmp_path):
    (tmp_path / "rows.jsonl").write_text(jsonl(ROWS))
    config = write_mix(tmp_path, "rows.jsonl")
    first = run_build(tmp_path, config, out="a")
    again = run_build(tmp_path, config, out="b")
    (tmp_path / "rows.jsonl").write_text(jsonl([*ROWS[:-1], {**ROWS[-1], "id": 1}]))  # same config text
    changed = run_build(tmp_path, config, out="c")
    assert first["content_fingerprint"] == again["content_fingerprint"]
    assert (
        first["per_source"]["rows.jsonl"]["content_hash"] == again["per_source"]["rows.jsonl"]["content_hash"]
    )
    assert first["config_hash"] == changed["config_hash"]
    assert first["content_fingerprint"] != changed["content_fingerprint"]
    assert (
        first["per_source"]["rows.jsonl"]["num_inputs"]
        == changed["per_source"]["rows.jsonl"]["num_inputs"]
        == 30
    )
    assert len(first["content_fingerprint"]) == len(first["per_source"]["rows.jsonl"]["content_hash"]) == 32


def test_corrupt_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text('{"num_rows":')
    with pytest.raises(ValueError, match=r"manifest\.json: not a readable manifest .*rebuild the dataset"):
        read_manifest(tmp_path)
