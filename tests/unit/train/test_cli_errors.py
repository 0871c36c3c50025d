"""The CLI's one error boundary (issue 13): every exception is one clear line, exit 2 for input errors,
1 for runtime failures, the traceback only with --debug / HERMES_SFT_DEBUG=1."""

from __future__ import annotations

import errno
import gzip
import json
import re

import pytest
import yaml

from data_recipes.outdir import DiskFullError, Terminated
from train.cli import main
from train.cli_errors import describe

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture
def mixture(tmp_path):
    """``mixture(name, data: bytes)``: a source file and a one-source config; returns the config path."""

    def make(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        config = tmp_path / "mix.yaml"
        config.write_text(f"max_seq_len: 256\nsources:\n  - path: {name}\n    recipe: plain\n")
        return str(config)

    return make


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def test_truncated_gz_is_one_line_naming_the_file(tmp_path, mixture, capsys):
    data = gzip.compress(b"".join(json.dumps(ROW).encode() + b"\n" for _ in range(50)))
    config = mixture("rows.jsonl.gz", data[: len(data) // 2])
    code, err = run_cli(capsys, "data", "build", config, "--out", str(tmp_path / "out"), "--quiet")
    assert code == 2
    assert re.search(r"rows\.jsonl\.gz.*(truncated|corrupt)", error_line(err))
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_in_an_override_names_the_override(tmp_path, mixture, capsys):
    config = mixture("rows.jsonl", (json.dumps(ROW) + "\n").encode())
    code, err = run_cli(capsys, "data", "build", config, "--out", str(tmp_path / "o"), "seed=[1")
    assert code == 2
    assert "override 'seed=[1'" in error_line(err)


def test_out_that_is_a_file_is_a_usage_error(tmp_path, mixture, capsys):
    config = mixture("rows.jsonl", (json.dumps(ROW) + "\n").encode())
    (tmp_path / "taken").write_text("x")
    code, err = run_cli(capsys, "data", "build", config, "--out", str(tmp_path / "taken"), "--quiet")
    assert code == 2
    assert "is a file" in error_line(err)


def test_tokenizer_out_non_empty_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("precious")
    code, err = run_cli(capsys, "tokenizer", "--out", str(tmp_path))
    assert code == 2 and "--overwrite" in error_line(err)
    code, err = run_cli(capsys, "tokenizer", "--out", str(tmp_path), "--overwrite")
    assert code == 2 and "not written by hermes-sft" in error_line(err)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_debug_flag_and_env_show_the_traceback(tmp_path, mixture, capsys, monkeypatch):
    config = mixture("rows.jsonl", (json.dumps(ROW) + "\n").encode())
    (tmp_path / "taken").write_text("x")
    argv = ["data", "build", config, "--out", str(tmp_path / "taken")]
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("HERMES_SFT_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("err", "code", "pattern"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"), 2,
         r"Read-only file system: /mnt/ro/out; choose a writable location"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), 2, r"Permission denied: /x"),
        (OSError(errno.ENOSPC, "No space left on device", "/tmp/x/part"), 1, r"no space left on /.*: /tmp/x/part"),
        (OSError(errno.EIO, "Input/output error", "/dev/sda"), 1, r"Input/output error: /dev/sda; rerun with --debug"),
        (EOFError("Compressed file ended"), 2, r"unexpected end of a file .*truncated or corrupt"),
        (KeyError("source"), 1, r"unexpected KeyError: 'source' at .*; rerun with --debug"),
        (yaml.YAMLError("mapping values are not allowed\n here"), 2, r"invalid YAML: mapping values are not allowed here"),
        (re.error("missing ), unterminated subpattern", "(", 0), 2,
         r"invalid regular expression '\(': missing \), unterminated subpattern at position 0"),
        (ValueError("config.yaml: seed: expected an integer"), 2, r"config\.yaml: seed"),
        (KeyboardInterrupt(), 130, r"interrupted"),
        (Terminated("stopped by SIGTERM"), 143, r"stopped by SIGTERM; partial output was removed"),
        (RuntimeError("NCCL timeout"), 1, r"unexpected RuntimeError: NCCL timeout"),
    ],
)  # fmt: skip
def test_every_exception_type_has_an_exit_code_and_one_line(err, code, pattern):
    try:
        raise err
    except BaseException as caught:  # describe reads the traceback, as at the boundary
        got_code, message = describe(caught)
    assert got_code == code
    assert re.search(pattern, message), message
    assert "\n" not in message


def test_disk_full_message_is_the_full_sentence(tmp_path):
    code, message = describe(DiskFullError(tmp_path / "out", 3_000_000_000, "--out out"))
    assert code == 1
    assert re.match(r"no space left on /\S* while writing --out out, needs ~3\.0 GB", message)
    assert "partial files were removed" in message


def test_corrupt_safetensors_error_is_an_input_error():
    from safetensors import SafetensorError

    code, message = describe(SafetensorError("Error while deserializing header: HeaderTooLarge"))
    assert code == 2 and "corrupt or unreadable safetensors file" in message


def test_num_proc_zero_is_refused_not_replaced_by_the_default(tmp_path, mixture, capsys):
    config = mixture("rows.jsonl", (json.dumps(ROW) + "\n").encode())
    code, err = run_cli(capsys, "data", "build", config, "--out", str(tmp_path / "o"), "--num-proc", "0")
    assert code == 2 and "--num-proc must be at least 1, got 0" in error_line(err)
