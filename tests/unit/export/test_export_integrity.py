"""Export integrity: every exported file is hashed into checksums.json; verify (without a reference)
fails naming a flipped file; export refuses a corrupt source; a hostile pickle in a checkpoint runs nothing
on the export and verify paths. (Real ZeRO-3 shards: tests/integration/test_export_zero3.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from data_recipes.outdir import MARKER
from tests.export_fixtures import llama_config, save_llama
from train.checksums import FOLDER_FILE
from train.export.export import export_checkpoint
from train.export.verify import verify_folder


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def flip_bit(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    src = save_llama(root / "hf", dtype=torch.bfloat16)
    return export_checkpoint(src, root / "out", verify=False, progress=False).out_dir


def test_every_exported_file_is_in_checksums(exported):
    recorded = json.loads((exported / FOLDER_FILE).read_text())
    on_disk = sorted(p.name for p in exported.iterdir() if p.name not in (FOLDER_FILE, MARKER))
    assert (
        exported / MARKER
    ).is_file()  # the ownership marker, written when the folder is renamed into place
    assert sorted(recorded["files"]) == on_disk and "model-00001-of-00001.safetensors" in on_disk
    assert recorded["algorithm"] == "xxh3_128"


def test_verify_without_reference_fails_on_a_flipped_bit_naming_the_file(exported, tmp_path):
    import shutil

    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    flip_bit(copy / "model-00001-of-00001.safetensors")  # a weight byte, not the header: the file still loads
    report = verify_folder(copy)
    assert [c.name for c in report.checks if c.status == "fail"] == ["checksums"]  # only the hash sees it
    assert (
        report.check("checksums").detail
        == f"{copy}/model-00001-of-00001.safetensors: checksum mismatch (the file changed after it was written: corrupt)"
    )
    with pytest.raises(
        ValueError, match=r"model-00001-of-00001\.safetensors: checksum mismatch.*refusing to export"
    ):
        export_checkpoint(copy, tmp_path / "again", verify=False, progress=False)


def _zero3_step(folder: Path, payload: object) -> Path:
    """A checkpoint step folder whose optimizer file carries ``payload``."""
    ds = folder / "ds"
    ds.mkdir(parents=True)
    (folder / "latest").write_text("ds")
    (folder / "model_config.json").write_text(json.dumps(llama_config().to_dict()))
    (folder / "hermes_state.json").write_text(json.dumps({"step": 1}))
    for r in range(2):
        torch.save(
            {"param_shapes": [], "ds_version": "0.19.8"}, ds / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
        )
        optim = {"optimizer_state_dict": {"zero_stage": 3, "partition_count": 2, "payload": payload}}
        torch.save(optim, ds / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    return folder


def test_a_hostile_pickle_runs_nothing_on_export_or_verify(exported, tmp_path):
    marker = tmp_path / "pwned"
    step = _zero3_step(tmp_path / "step-00000001", Evil(str(marker)))
    with pytest.raises(ValueError, match=r"optim_states\.pt: unreadable checkpoint file"):
        export_checkpoint(step, tmp_path / "out", verify=False, progress=False)
    with pytest.raises(ValueError, match=r"optim_states\.pt: unreadable checkpoint file"):
        verify_folder(exported, reference=step)
    assert not marker.exists()


def test_merge_lora_on_a_full_model_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match=r"--merge-lora: .* is a full fine-tuning run, not a LoRA adapter"):
        export_checkpoint(exported, tmp_path / "out", merge_lora=True, verify=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_weights_fingerprint_tells_same_shaped_models_apart(tmp_path):
    import shutil

    from train.checksums import weights_fingerprint

    a = save_llama(tmp_path / "a", seed=0, with_tokenizer=False)
    b = save_llama(tmp_path / "b", seed=1, with_tokenizer=False)
    copy = shutil.copytree(a, tmp_path / "copy")
    assert weights_fingerprint(a) == weights_fingerprint(copy) != weights_fingerprint(b)


def test_sigterm_removes_the_hidden_temporary_folder(tmp_path):
    """As Ctrl-C does: the export in flight (here: verifying, a few seconds) ends with 143, nothing left."""
    import signal
    import subprocess
    import sys
    import time

    src = save_llama(tmp_path / "hf", dtype=torch.bfloat16)
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "-m", "train.cli", "export", str(src), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=repo, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert list(tmp_path.glob(".out.tmp-*")), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.stderr.read()
    assert "stopped by SIGTERM; partial output was removed" in proc.stderr.read()
    assert not list(tmp_path.glob(".out.*")) and not out.exists()
