"""``hermes-sft data build / stats / inspect`` through the real console script, as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hermes-sft", path=str(Path(sys.executable).parent)) or "hermes-sft"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_build_stats_inspect_sample_config(tmp_path, repo_root):
    out = tmp_path / "sample"
    done = cli(
        "data",
        "build",
        "configs/data/sample.yaml",
        "--out",
        str(out),
        "--num-proc",
        "2",
        "--quiet",
        cwd=repo_root,
    )
    assert done.returncode == 0, done.stderr
    assert "per source" in done.stdout and "tools-hermes-fc" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["num_samples_in"] == 300 == manifest["num_samples_kept"] + sum(manifest["dropped"].values())
    )
    assert set(manifest["dropped"]) <= {"duplicate"}  # the bundled data is clean apart from a few repeats
    splits = manifest["splits"]
    assert manifest["num_rows"] == splits["train"]["num_rows"] + splits["validation"]["num_rows"]
    assert (
        manifest["packing_efficiency"] > 0.9
        and manifest["per_source"]["length-control"]["num_length_cut"] > 0
    )

    again = cli("data", "build", "configs/data/sample.yaml", "--out", str(out), "--quiet", cwd=repo_root)
    assert again.returncode == 2 and "exists and is not empty: pass --overwrite" in again.stderr

    stats = cli("data", "stats", str(out), cwd=repo_root)
    assert stats.returncode == 0 and "packing_efficiency" in stats.stdout and "length_control" in stats.stdout

    inspect = cli("data", "inspect", str(out), "--row", "0", "--no-color", cwd=repo_root)
    assert inspect.returncode == 0, inspect.stderr
    assert (
        "train row 0 of" in inspect.stdout
        and "positions ok" in inspect.stdout
        and "BAD" not in inspect.stdout
    )
    num_samples = int(inspect.stdout.split(" samples,")[0].rsplit(" ", 1)[1])
    assert "⟦" in inspect.stdout and inspect.stdout.count("║") >= num_samples - 1 >= 1


def test_clear_errors(tmp_path, repo_root):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources:\n  - {path: missing.jsonl, recipe: plain}\n")
    done = cli("data", "build", str(cfg), "--out", str(tmp_path / "o"), cwd=repo_root)
    assert (
        done.returncode == 2
        and "missing.jsonl: file not found" in done.stderr
        and "Traceback" not in done.stderr
    )
    done = cli(
        "data",
        "build",
        "tests/data/bad/bad.yaml",
        "--out",
        str(tmp_path / "o"),
        "--strict",
        "--quiet",
        cwd=repo_root,
    )
    assert done.returncode == 2 and "--strict: 20 sample(s) would be dropped" in done.stderr
    done = cli("data", "stats", str(tmp_path), cwd=repo_root)
    assert done.returncode == 2 and "no manifest.json" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_build_removes_the_staging_folder(tmp_path, sig):
    """Issue 13: SIGTERM (a SLURM preemption, `kill`) cleans up as Ctrl-C does: no hidden temp folder."""
    row = {"messages": [{"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "a " * 50}]}
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in range(40_000)))
    (tmp_path / "mix.yaml").write_text("sources:\n  - {path: rows.jsonl, recipe: plain}\n")
    exe = shutil.which("hermes-sft", path=str(Path(sys.executable).parent)) or "hermes-sft"
    cmd = [exe, "data", "build", "mix.yaml", "--out", "out", "--quiet", "--num-proc", "2"]  # a worker pool
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tmp-*/.work/raw.arrow")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # into the parallel render stage
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "partial output was removed" in err and "Traceback" not in err  # none from the workers either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.yaml", "rows.jsonl"]


def _can_mount_tmpfs(folder: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {folder}"],
                           capture_output=True)  # fmt: skip
    return probe.returncode == 0


def test_disk_full_is_one_line_with_the_need_and_leaves_nothing(tmp_path):
    """A real full disk: a 2 MB tmpfs in a private mount namespace (skipped where that is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    row = {"messages": [{"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "a " * 50}]}
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in range(20_000)))
    (tmp_path / "mix.yaml").write_text("sources:\n  - {path: rows.jsonl, recipe: plain}\n")
    exe = shutil.which("hermes-sft", path=str(Path(sys.executable).parent)) or "hermes-sft"
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {disk} && {exe} data build mix.yaml --out {disk}/out --quiet; "
        f"code=$?; ls -A {disk}; exit $code"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert re.match(rf"hermes-sft data build: error: no space left on {disk} while writing --out {disk}/out, "
                    r"needs ~\d+\.\d (GB|MB) \(estimate\)", line), line  # fmt: skip
    assert "partial files were removed" in line and "Traceback" not in done.stderr
    assert done.stdout.strip() == ""  # `ls -A` of the full disk after the build: nothing left behind
