"""bench/gpu_check.py --cpu-smoke: the prepared one-GPU check runs end to end (so it never rots), as it
will on the GPU machine: with deepspeed, trl and datasets unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Makes deepspeed / trl / datasets unimportable, like on the GPU machine, then runs the script.
RUNNER = """
import runpy, sys
for name in ("deepspeed", "trl", "datasets"):
    sys.modules[name] = None
sys.argv = ["bench/gpu_check.py", "--cpu-smoke", "--out", sys.argv[1]]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


def test_gpu_check_cpu_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["environment"]["forbidden_modules_loaded"] == []
    rows = result["backends"]
    assert not rows["varlen"]["available"] and "CPU" in rows["varlen"]["note"]  # CUDA-only kernel, reported
    for label in ("sdpa (dense block mask)", "varlen (reference kernel, CPU)"):
        iso, thr = rows[label]["isolation"], rows[label]["throughput"]
        assert iso["loss_rel_err"] < 1e-5 and iso["grad_max_rel_err"] < 1e-5, (label, iso)
        assert thr["tokens_per_s"] > 0 and thr["step_time_s"] > 0
    runs = list(result["loss"]["runs"].values())
    assert len(runs) == 2 and abs(runs[0]["loss"] - runs[1]["loss"]) < 1e-5 * abs(runs[0]["loss"])
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| sdpa (dense block mask) | yes |" in table and "tiled (256 tokens)" in table
