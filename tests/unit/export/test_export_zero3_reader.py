"""The ZeRO-3 partition reader on hand-built checkpoints: 3 ranks, 2 param groups, padding, frozen
params, buffers, shared params — and the safe loader that never runs code from a pickle."""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import pytest
import torch

from train.export.reading.zero3 import Opaque, load_deepspeed_file, open_zero3

WORLD = 3


class FakeStage:
    """Pickled like DeepSpeed's ZeroStageEnum (a class the loader does not know)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self):
        return (FakeStage, (self.value,))


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _partition(t: torch.Tensor, rank: int) -> torch.Tensor:
    flat = t.reshape(-1)
    part = math.ceil(flat.numel() / WORLD)
    padded = torch.cat([flat, torch.zeros(part * WORLD - flat.numel())])
    return padded[rank * part : (rank + 1) * part]


def _checkpoint(folder, extra_optim=None):
    g = torch.Generator().manual_seed(0)
    params = {"a.weight": torch.randn(5, 3, generator=g), "b.bias": torch.randn(7, generator=g)}
    params2 = {"c.weight": torch.randn(4, 4, generator=g)}
    frozen = {"f.weight": torch.randn(2, 5, generator=g)}
    buf = torch.arange(4)
    folder.mkdir()
    for r in range(WORLD):
        groups = [
            torch.cat([_partition(t, r) for t in params.values()]),
            torch.cat([_partition(t, r) for t in params2.values()]),
        ]
        model_states = {
            "module": {"a.weight": torch.empty(0), "buf": buf},
            "buffer_names": ["buf"],
            "param_shapes": [OrderedDict((n, t.shape) for n, t in params.items()), OrderedDict((n, t.shape) for n, t in params2.items())],
            "shared_params": {"tied.weight": "a.weight"},
            "frozen_param_shapes": OrderedDict((n, t.shape) for n, t in frozen.items()),
            "frozen_param_fragments": {n: _partition(t, r).clone() for n, t in frozen.items()},
            "ds_version": "0.19.8",
        }  # fmt: skip
        optim = {
            "optimizer_state_dict": {
                "zero_stage": FakeStage(3),
                "partition_count": WORLD,
                "fp32_flat_groups": groups,
                "optimizer_state_dict": {"state": {0: {"exp_avg": torch.zeros(3)}}},
                **(extra_optim or {}),
            }
        }
        torch.save(model_states, folder / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        torch.save(optim, folder / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    return params | params2, frozen, buf


def test_reader_reassembles_every_tensor(tmp_path):
    params, frozen, buf = _checkpoint(tmp_path / "ds")
    ckpt = open_zero3(tmp_path / "ds")
    assert ckpt.world_size == WORLD and ckpt.ds_version == "0.19.8"
    assert ckpt.trainable == list(params) and ckpt.frozen == list(frozen)
    for name, t in (params | frozen).items():
        lazy = ckpt.tensors[name]
        assert torch.equal(lazy.materialize(), t), name
        if t.dim() == 2:  # row ranges that straddle rank boundaries and group boundaries
            for a, b in [(0, 1), (1, t.shape[0] - 1), (t.shape[0] - 1, t.shape[0])]:
                assert torch.equal(lazy.rows(a, b), t[a:b]), (name, a, b)
    assert torch.equal(ckpt.tensors["buf"].materialize(), buf)
    assert ckpt.tensors["tied.weight"] is ckpt.tensors["a.weight"]


def test_missing_rank_and_wrong_stage(tmp_path):
    _checkpoint(tmp_path / "ds")
    (tmp_path / "ds" / "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(ValueError, match=r"ranks 0\.\.2, found ranks \[0, 1\]"):
        open_zero3(tmp_path / "ds")


def test_partition_sizes_must_add_up(tmp_path):
    _checkpoint(tmp_path / "ds")
    for r in range(WORLD):  # a parameter list that does not match the flat partitions
        path = tmp_path / "ds" / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
        state = torch.load(path, weights_only=False)
        state["param_shapes"][1]["c.weight"] = torch.Size([4, 5])
        torch.save(state, path)
    with pytest.raises(ValueError, match="corrupt or its files come from different saves"):
        open_zero3(tmp_path / "ds")


def test_loader_never_executes_pickled_code(tmp_path):
    torch.save({"x": torch.ones(2), "stage": FakeStage(3)}, tmp_path / "f.pt")
    state, mapped = load_deepspeed_file(tmp_path / "f.pt")
    assert isinstance(state["stage"], Opaque)  # an unknown class becomes an inert placeholder
    assert state["stage"].args == (3,) and mapped and torch.equal(state["x"], torch.ones(2))
    marker = tmp_path / "pwned"
    torch.save({"x": torch.ones(2), "payload": Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="unreadable checkpoint file"):  # torch's unpickler blocks os/posix
        load_deepspeed_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_loader_reports_truncated_files(tmp_path):
    torch.save({"x": torch.ones(1000)}, tmp_path / "f.pt")
    data = (tmp_path / "f.pt").read_bytes()
    (tmp_path / "f.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable checkpoint file"):
        load_deepspeed_file(tmp_path / "f.pt")
