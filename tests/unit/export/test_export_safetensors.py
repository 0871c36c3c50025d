"""Streaming safetensors writer/reader, lazy tensors and the all-or-nothing output folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from train.export.reading.tensors import (
    InMemoryTensor,
    MmapTensor,
    SafetensorsFile,
    read_safetensors_folder,
    row_chunks,
)
from train.export.writing.folder import Output, atomic_output_dir, check_target, write_outputs
from train.model import write_safetensors
from train.safetensors_io import ShardedWriter, TensorSpec, parse_size


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(7, 5, generator=g).to(torch.bfloat16),
        "a.weight": torch.randn(3, generator=g),
        "q.weight": torch.randn(4, 16, generator=g).to(torch.float8_e4m3fn),
        "q.weight_scale": torch.rand(4, 1, generator=g).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64),
    }


def _write(folder, tensors, max_bytes, order=None, chunk_rows=2, single=None):
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    w = ShardedWriter(folder, specs, max_bytes, single_file=single)
    for name in order or reversed(list(tensors)):  # any order works
        t = tensors[name]
        rows = t.shape[0] if t.dim() else 1
        for s in range(0, rows, chunk_rows):
            w.write(name, t[s : s + chunk_rows], s)
    w.finish()
    return w


def test_single_shard_is_byte_identical_to_save_file(tmp_path):
    tensors = _tensors()
    _write(tmp_path, tensors, 1 << 30, single="ours.safetensors")
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_sharded_folder_round_trips(tmp_path):
    tensors = _tensors()
    w = _write(tmp_path, tensors, 80)
    assert len(w.shards) > 2
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert set(index["weight_map"]) == set(tensors)
    loaded = {}
    for shard in set(index["weight_map"].values()):
        loaded |= load_file(str(tmp_path / shard))
    for name, t in tensors.items():
        assert torch.equal(loaded[name].view(torch.uint8), t.view(torch.uint8)), name
    lazy = read_safetensors_folder(tmp_path)
    assert torch.equal(lazy["b.weight"].rows(2, 6), tensors["b.weight"][2:6])
    assert torch.equal(lazy["a.weight"].materialize(), tensors["a.weight"])


def test_reader_refuses_truncated_and_inconsistent_files(tmp_path):
    save_file(_tensors(), str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        SafetensorsFile(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "gone.safetensors"}})
    )
    with pytest.raises(ValueError, match="missing"):
        read_safetensors_folder(tmp_path)


def test_writer_rejects_overlong_writes(tmp_path):
    w = ShardedWriter(tmp_path, [TensorSpec("x", (2, 2), torch.float32)], 1 << 20)
    with pytest.raises(AssertionError):
        w.write("x", torch.zeros(3, 2), 0)
    w.abort()


def test_row_chunks_cover_and_bound():
    t = InMemoryTensor(torch.zeros(10, 1000))
    chunks = list(row_chunks(t, chunk_bytes=3 * 4000))
    assert chunks[0] == (0, 3) and chunks[-1] == (9, 10)
    assert sum(b - a for a, b in chunks) == 10
    assert list(row_chunks(InMemoryTensor(torch.zeros(2, 10**6)), 16)) == [(0, 1), (1, 2)]  # one row at least


def test_mmap_tensor_reads_and_releases(tmp_path):
    x = torch.arange(3 * 4096, dtype=torch.float32).reshape(3, 4096)
    torch.save({"x": x}, tmp_path / "f.pt")
    loaded = torch.load(tmp_path / "f.pt", mmap=True, weights_only=True)["x"]
    t = MmapTensor(loaded)
    assert torch.equal(t.rows(1, 3), x[1:3])
    assert torch.equal(t.rows(1, 3), x[1:3])  # pages re-read from the file after release
    assert not MmapTensor(x.t())._mapped  # a non-contiguous view is never released


@pytest.mark.parametrize(
    ("text", "value"), [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), (7, 7)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "five", "-1GB", "3XB"])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size(bad)


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "half.safetensors").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert not out.exists() and not list(tmp_path.iterdir())
    with atomic_output_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1" and len(list(tmp_path.iterdir())) == 1


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    check_target(out, overwrite=False)  # empty is fine
    (out / "old").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        check_target(out, overwrite=False)
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    with pytest.raises(ValueError, match="would replace the source"):
        check_target(tmp_path, overwrite=True, protect=[out])


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / ".out.tmp-999999999-deadbeef"
    stale.mkdir()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("1")
    assert not stale.exists()


def test_failure_in_a_producer_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    spec = TensorSpec("x", (4, 4), torch.float32)

    def produce(writer):
        writer.write("x", torch.zeros(2, 4), 0)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError), atomic_output_dir(out) as tmp:
        write_outputs(tmp, [Output([spec], produce)], 1 << 20, progress=False)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_free_space_is_checked_first(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 90, 10))
    spec = TensorSpec("x", (1024, 1024), torch.float32)
    with pytest.raises(ValueError, match="not enough disk space"):
        write_outputs(tmp_path, [Output([spec], lambda w: None)], 1 << 30, progress=False)


def _save_file_reference(tensors, out, max_bytes):
    """What the trainer's gathered save wrote before it used the one writer: save_file per shard."""
    groups, size = [{}], 0
    for name, t in tensors.items():
        if size and size + t.numel() * t.element_size() > max_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += t.numel() * t.element_size()
    if len(groups) == 1:
        save_file(groups[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(out / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(group, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


@pytest.mark.parametrize("max_bytes", [1 << 30, 60])
def test_trainer_gathered_save_is_byte_identical_to_save_file(tmp_path, max_bytes):
    tensors = _tensors()
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    ours.mkdir()
    ref.mkdir()
    write_safetensors(iter(tensors.items()), ours, rank=0, max_shard_bytes=max_bytes)
    _save_file_reference(tensors, ref, max_bytes)
    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == names
    assert (len(names) > 1) == (max_bytes == 60)
    for name in names:
        assert (ours / name).read_bytes() == (ref / name).read_bytes(), name
    other_rank = tmp_path / "rank1"
    other_rank.mkdir()
    write_safetensors(((n, None) for n in tensors), other_rank, rank=1)
    assert not any(other_rank.iterdir())
