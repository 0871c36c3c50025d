"""The README's main command: `hermes-sft demo` runs every stage and they all pass."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_the_whole_pipeline(tmp_path, repo_root):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "train.cli", "demo", "--out", str(out), "--steps", "4"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "hermes-sft demo: all stages passed" in result.stdout
    assert "prompt == training renderer: yes" in result.stdout
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["num_samples_in"] == manifest["num_samples_kept"] + sum(manifest["dropped"].values())
    assert json.loads((out / "run" / "summary.json").read_text())["step"] == 4
    for fmt in ("bf16", "fp8"):
        folder = out / f"model-{fmt}"
        assert (folder / "chat_template.jinja").read_bytes() == (
            repo_root / "data_recipes" / "chat_template.jinja"
        ).read_bytes()
        assert json.loads((folder / "generation_config.json").read_text())["top_k"] == 20
    assert "quantization_config" in json.loads((out / "model-fp8" / "config.json").read_text())
