"""The resume path's loader: DeepSpeed's own classes are rebuilt, anything else is refused unexecuted."""

from __future__ import annotations

import os

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum

from train.safe_load import SafeCheckpointLoading, load_torch_file


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class Unknown:
    def __reduce__(self):
        return (Unknown, ())


class Inner:
    """A stand-in for DeepSpeed's checkpoint engine: its load would execute anything."""

    name = "inner"

    def load(self, path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)


def test_resume_loader_rebuilds_deepspeeds_classes(tmp_path):
    scaler = LossScaler(1.0)
    torch.save({"zero_stage": ZeroStageEnum(3), "loss_scaler": scaler, "w": torch.ones(3)}, tmp_path / "o.pt")
    state = SafeCheckpointLoading(Inner()).load(str(tmp_path / "o.pt"), map_location=torch.device("cpu"))
    assert state["zero_stage"] is ZeroStageEnum.weights
    assert isinstance(state["loss_scaler"], LossScaler) and state["loss_scaler"].cur_scale == 1.0
    assert torch.equal(state["w"], torch.ones(3))


def test_resume_loader_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "payload": Evil(str(marker))}, tmp_path / "model_states.pt")
    engine = SafeCheckpointLoading(Inner())
    with pytest.raises(ValueError, match=r"model_states\.pt: the pickle names \['posix\.system'\]"):
        engine.load(str(tmp_path / "model_states.pt"), map_location="cpu")
    assert not marker.exists()
    assert engine.name == "inner"  # everything but load is the wrapped engine's


def test_resume_loader_refuses_classes_outside_the_allowlist(tmp_path):
    torch.save({"x": Unknown()}, tmp_path / "f.pt")
    with pytest.raises(ValueError, match="Unknown"):
        load_torch_file(tmp_path / "f.pt", inert=False)
