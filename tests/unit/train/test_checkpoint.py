"""Checkpoint bookkeeping without DeepSpeed: completeness, latest pointer, resume rules, pruning, RNG,
stop requests. (Real saves, kills mid-save and resumes: tests/integration/test_train_zero3.py.)"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from train import checkpoint as ck


def make_ckpt(run: Path, step: int, complete: bool = True, **state) -> Path:
    path = run / "checkpoints" / ck.step_name(step)
    path.mkdir(parents=True)
    if complete:
        base = {
            "step": step,
            "model_fingerprint": "m",
            "world_size": 2,
            "dataset": {"tokenizer_fingerprint": "t", "template_fingerprint": "p", "config_hash": "c"},
        }
        (path / ck.STATE_FILE).write_text(json.dumps(base | state))
    return path


def expected(**kw):
    base = {
        "model_fingerprint": "m",
        "world_size": 2,
        "dataset": {"tokenizer_fingerprint": "t", "template_fingerprint": "p", "config_hash": "c"},
    }
    return base | kw


def test_incomplete_and_temporary_folders_are_ignored(tmp_path):
    make_ckpt(tmp_path, 2)
    make_ckpt(tmp_path, 4, complete=False)  # killed before hermes_state.json
    (tmp_path / "checkpoints" / ".tmp-step-00000006").mkdir()
    assert [s for s, _ in ck.complete_checkpoints(tmp_path)] == [2]
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"  # no pointer: newest complete
    (tmp_path / "checkpoints" / "latest").write_text("step-00000004\n")  # stale pointer
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"
    assert [p.name for p in ck.remove_stale_temporaries(tmp_path)] == [".tmp-step-00000006"]


def test_resume_modes(tmp_path):
    assert ck.resolve_resume(tmp_path, "auto") is None and ck.resolve_resume(tmp_path, "never") is None
    make_ckpt(tmp_path, 3)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000003\n")
    assert ck.resolve_resume(tmp_path, "auto").name == "step-00000003"
    with pytest.raises(ValueError, match=r"already holds checkpoints; use checkpoint\.resume=auto"):
        ck.resolve_resume(tmp_path, "never")
    assert ck.resolve_resume(tmp_path, str(tmp_path)).name == "step-00000003"  # a run dir: its latest
    assert (
        ck.resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-00000003")).name == "step-00000003"
    )
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ck.resolve_resume(tmp_path, str(tmp_path / "elsewhere"))


def test_compatibility_rules(tmp_path):
    path = make_ckpt(tmp_path, 1)
    state = ck.read_state(path)
    ck.check_compatible(state, path, expected(), explicit=False)
    with pytest.raises(ValueError, match="written for a different model"):
        ck.check_compatible(state, path, expected(model_fingerprint="other"), explicit=True)
    with pytest.raises(ValueError, match="holds ZeRO-3 shards of 2 ranks but this run has 4"):
        ck.check_compatible(state, path, expected(world_size=4), explicit=False)
    other_data = expected(
        dataset={"tokenizer_fingerprint": "t", "template_fingerprint": "p", "config_hash": "new"}
    )
    with pytest.raises(ValueError, match="different dataset \\(config_hash differ"):
        ck.check_compatible(state, path, other_data, explicit=False)
    ck.check_compatible(state, path, other_data, explicit=True)  # an explicit path may continue on new data


def test_prune_keeps_the_newest_and_the_latest(tmp_path):
    for step in (1, 2, 3, 4):
        make_ckpt(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000004\n")
    removed = ck.prune(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step-00000001", "step-00000002"]
    assert [s for s, _ in ck.complete_checkpoints(tmp_path)] == [3, 4]


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(ck.rng_state()))
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(state)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_stop_request_from_signals_and_the_stop_file(tmp_path):
    stop = ck.StopRequest(tmp_path / "STOP")
    stop.install()
    try:
        assert not stop.local()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.local() and stop.signal == "SIGUSR1"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is not stop._handle
    by_file = ck.StopRequest(tmp_path / "STOP")
    (tmp_path / "STOP").touch()
    assert by_file.local() and "stop file" in by_file.signal
    assert not ck.StopRequest(None).local()


def test_write_json_is_atomic(tmp_path):
    ck.write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert not (tmp_path / "a.json.tmp").exists()
