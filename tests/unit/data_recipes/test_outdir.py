"""Output folders: never delete what the command did not create (issue 13, finding 1)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_recipes.outdir import (
    MARKER,
    DiskFullError,
    OutputRefused,
    Terminated,
    check_out,
    owned_output,
    stop_signals_raise,
)

REPO = Path(__file__).resolve().parents[3]


def make_owned(tmp_path: Path, command: str = "data build") -> Path:
    out = tmp_path / "out"
    with owned_output(out, command, overwrite=False) as staging:
        (staging / "manifest.json").write_text("{}")
    return out


def test_new_folder_is_written_with_a_marker_listing_its_entries(tmp_path):
    out = make_owned(tmp_path)
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"tool": "hermes-sft", "command": "data build", "entries": ["manifest.json"]}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_non_empty_out_is_refused_without_overwrite(tmp_path):
    out = make_owned(tmp_path)
    with pytest.raises(OutputRefused, match="not empty: pass --overwrite"):
        check_out(out, overwrite=False, command="data build")


def test_overwrite_replaces_a_folder_the_same_command_wrote(tmp_path):
    out = make_owned(tmp_path)
    with owned_output(out, "data build", overwrite=True) as staging:
        (staging / "train").mkdir()
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "train"]


def test_overwrite_never_deletes_a_folder_without_the_marker(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    refused = pytest.raises(OutputRefused, match="not written by hermes-sft")
    with refused, owned_output(user, "tokenizer", overwrite=True) as staging:
        (staging / "tokenizer.json").write_text("{}")
    assert (user / "notes.txt").read_text() == "precious"


def test_overwrite_never_deletes_files_the_user_added_to_an_owned_folder(tmp_path):
    out = make_owned(tmp_path)
    (out / "raw.jsonl").write_text("{}\n")
    with pytest.raises(OutputRefused, match=r"did not write \(raw.jsonl\)"):
        check_out(out, overwrite=True, command="data build")


def test_overwrite_never_replaces_a_folder_holding_an_input(tmp_path):
    out = make_owned(tmp_path)
    config = out / "validation" / "mix.yaml"
    with pytest.raises(OutputRefused, match="holds this command's input"):
        check_out(out, overwrite=True, command="data build", inputs=[config])
    with pytest.raises(OutputRefused, match="holds this command's input"):
        check_out(tmp_path, overwrite=True, command="data build", inputs=[tmp_path / "raw.jsonl"])


def test_another_commands_folder_is_not_replaced(tmp_path):
    out = make_owned(tmp_path, command="data build")
    with pytest.raises(OutputRefused, match="written by `hermes-sft data build`, not `tokenizer`"):
        check_out(out, overwrite=True, command="tokenizer")


def test_out_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OutputRefused, match="is a file"):
        check_out(path, overwrite=True, command="data build")


def test_failure_removes_staging_and_keeps_the_old_folder(tmp_path):
    out = make_owned(tmp_path)
    with pytest.raises(RuntimeError), owned_output(out, "data build", overwrite=True) as staging:
        (staging / "half").write_text("x")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "manifest.json").exists()


def test_disk_full_names_the_device_and_need_and_removes_partial_files(tmp_path):
    full = pytest.raises(DiskFullError, match=r"no space left on /.*needs ~2\.0 GB \(estimate\)")
    with full, owned_output(tmp_path / "out", "data build", overwrite=False, need_bytes=2_000_000_000) as st:
        (st / "part.arrow").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device", str(st / "part.arrow"))
    assert list(tmp_path.iterdir()) == []


SIGTERM_CHILD = """
import sys, time
from data_recipes.outdir import owned_output
with owned_output(sys.argv[1], "data build", overwrite=False) as staging:
    (staging / "big.arrow").write_bytes(b"x" * 1000)
    print(staging, flush=True)
    time.sleep(60)
"""


def test_sigterm_removes_the_staging_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "out")],
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    staging = Path(proc.stdout.readline().strip())
    assert staging.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_reported_with_the_out_path(tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "out"  # a parent that is a file: no folder can be made there
    with pytest.raises(OSError) as err, owned_output(target, "data build", overwrite=False):
        pass
    assert err.value.filename == str(target) and err.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_a_stop_replaced_by_library_code_still_ends_as_the_stop():
    """datasets.map(num_proc) turns the exception into a TimeoutError in a `finally`: still a stop."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="stopped by SIGTERM"), stop_signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            raise TimeoutError  # what the library does
    assert signal.getsignal(signal.SIGTERM) == before
