"""Checkpoint integrity without DeepSpeed: every file hashed at save, a corrupt checkpoint skipped (auto)
or refused (explicit) naming the file, a changed dataset refused, a full disk reported and cleaned up.
(The same on real ZeRO-3 shards: tests/integration/test_train_zero3.py.)"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from data_recipes.outdir import DiskFullError
from train import checkpoint as ck
from train.data import content_fingerprint


class FakeEngine:
    """Writes one shard file per save, like DeepSpeed's engine.save_checkpoint(dir, tag)."""

    def save_checkpoint(self, save_dir: str, tag: str, exclude_frozen_parameters: bool) -> None:
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(
            bytes(range(256)) * 64
        )


STATE = {"step": 0, "model_fingerprint": "m", "world_size": 1, "dataset": {"content_fingerprint": "d"}}


def save(run: Path, step: int) -> Path:
    return ck.save_checkpoint(
        FakeEngine(), run, step, STATE | {"step": step}, {"model_config.json": {"a": 1}},
        rank=0, keep_last=5, exclude_frozen=False, barrier=lambda: None,
    )  # fmt: skip


def flip_bit(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_every_file_of_a_checkpoint_is_hashed(tmp_path):
    path = save(tmp_path, 1)
    files = ck.read_state(path)["checksums"]["files"]
    assert sorted(files) == [
        "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt", "model_config.json", "rng/rank-00000.json",
    ]  # fmt: skip
    assert ck.checkpoint_problems(path) == []


def test_a_flipped_bit_falls_back_to_the_previous_checkpoint(tmp_path):
    save(tmp_path, 1)
    bad = save(tmp_path, 2)
    flip_bit(bad / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    path, notes = ck.resolve_resume(tmp_path, "auto")
    assert path.name == "step-00000001"
    assert "step-00000002 is corrupt" in notes[0] and "optim_states.pt: checksum mismatch" in notes[0]
    assert "falling back to the previous complete checkpoint" in notes[0]
    with pytest.raises(ValueError, match=r"optim_states\.pt: checksum mismatch"):  # named: no fallback
        ck.resolve_resume(tmp_path, str(bad))
    flip_bit(tmp_path / "checkpoints" / "step-00000001" / "model_config.json", 2)
    with pytest.raises(ValueError, match="no intact checkpoint to resume from"):
        ck.resolve_resume(tmp_path, "auto")


def test_a_missing_file_is_named(tmp_path):
    path = save(tmp_path, 1)
    (path / "rng" / "rank-00000.json").unlink()
    assert ck.checkpoint_problems(path) == [f"{path}/rng/rank-00000.json: missing (listed in the checksums)"]


def test_a_different_dataset_content_is_refused_unless_the_path_is_explicit(tmp_path):
    path = save(tmp_path, 1)
    state = ck.read_state(path)
    other = {"model_fingerprint": "m", "world_size": 1, "dataset": {"content_fingerprint": "e"}}
    with pytest.raises(ValueError, match=r"different dataset \(content_fingerprint differ"):
        ck.check_compatible(state, path, other, explicit=False)
    ck.check_compatible(state, path, other, explicit=True)


def test_content_fingerprint_follows_rows_not_locations():
    manifest = {
        "per_source": {"a": {"location": "/x/a.jsonl", "content_hash": "h1", "num_inputs": 60}},
        "splits": {"train": {"num_rows": 10, "num_tokens": 5000}},
    }
    moved = json.loads(json.dumps(manifest))
    moved["per_source"]["a"]["location"] = "/elsewhere/a.jsonl"
    edited = json.loads(json.dumps(manifest))
    edited["per_source"]["a"]["content_hash"] = "h2"
    assert content_fingerprint(moved) == content_fingerprint(manifest) != content_fingerprint(edited)


def test_disk_full_during_a_save_says_so_and_removes_the_partial_folder(tmp_path, monkeypatch):
    save(tmp_path, 1)
    monkeypatch.setenv(ck.FAULT_ENOSPC_ENV, "2")
    with pytest.raises(
        DiskFullError,
        match=r"^\[Errno 28\] no space left on /\S* while writing checkpoint \.tmp-step-00000002, needs ~0\.0 MB",
    ) as info:
        save(tmp_path, 2)
    assert "the partial files were removed: free some space or lower checkpoint.keep_last" in str(info.value)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000001"]


def test_a_lora_resume_on_another_base_is_refused(tmp_path):
    from tests.export_fixtures import save_llama
    from train.checksums import weights_fingerprint

    base = save_llama(tmp_path / "base", seed=0, with_tokenizer=False)
    other = save_llama(tmp_path / "other", seed=1, with_tokenizer=False)  # same shapes, other weights
    state = STATE | {"lora": {"r": 8, "base_fingerprint": weights_fingerprint(base)}}
    expected = {"model_fingerprint": "m", "world_size": 1, "dataset": {"content_fingerprint": "d"}}
    ck.check_compatible(state, tmp_path, expected | {"base": str(base)}, explicit=False)
    with pytest.raises(
        ValueError, match=r"trained on a base with weights fingerprint .* holds other weights"
    ):
        ck.check_compatible(state, tmp_path, expected | {"base": str(other)}, explicit=True)
