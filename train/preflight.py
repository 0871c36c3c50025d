"""``hermes-sft train CONFIG --preflight``: the checks a multi-node job runs before it trains.

Run under the same launcher and world size as the real job (the SLURM script does), every rank checks
what it can see: its GPUs, the dataset and its fingerprints, that the output dir is writable *and
shared* (every rank writes a marker; rank 0 must see all of them), and a collective (all-reduce
correctness and bus bandwidth). Problems from all ranks are printed together; the exit code is 2 if any.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from data_recipes.tokenizer import load_tokenizer
from train import data as data_mod
from train.config import TrainConfig, batch_layout
from train.distributed import local_device, resolve_backend
from train.dpo import check_objective
from train.ds_config import load_template


def _local_checks(cfg: TrainConfig, config_path: str, rank: int, world: int, on_gpu: bool) -> list[str]:
    problems: list[str] = []
    host = socket.gethostname()
    try:
        batch_layout(cfg.batch, world, cfg.distributed.sequence_parallel)
        load_template(cfg.distributed.deepspeed, Path(config_path).resolve().parent)
    except ValueError as err:
        problems.append(str(err))
    if on_gpu:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if torch.cuda.device_count() < local_world:
            problems.append(
                f"{host}: {torch.cuda.device_count()} GPU(s) visible, {local_world} ranks on this node"
            )
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # once per node: the dataset must be visible everywhere
        problems += _dataset_checks(cfg, host)
    return problems


def _dataset_checks(cfg: TrainConfig, host: str) -> list[str]:
    try:
        manifest = data_mod.read_manifest(cfg.data.path)
        data_mod.check_manifest(
            manifest, load_tokenizer(cfg.model.tokenizer), cfg.data.path, cfg.data.max_seq_len
        )
        check_objective(manifest, cfg)
        data_mod.load_splits(cfg.data.path, cfg.data.train_split, cfg.data.eval_split)
    except (ValueError, OSError) as err:
        return [f"{host}: {err}"]
    if cfg.model.path and not (Path(cfg.model.path) / "config.json").is_file():
        return [f"{host}: model.path={cfg.model.path} has no config.json"]
    return []


def _shared_dir_check(run_dir: Path, rank: int, world: int, barrier) -> list[str]:
    marker_dir = run_dir / ".preflight"
    problems = []
    try:
        marker_dir.mkdir(parents=True, exist_ok=True)
        (marker_dir / f"rank-{rank:05d}").write_text(socket.gethostname(), encoding="utf-8")
    except OSError as err:
        problems.append(f"{socket.gethostname()}: output_dir {run_dir} is not writable ({err})")
    barrier()
    if rank == 0:
        seen = len(list(marker_dir.glob("rank-*"))) if marker_dir.is_dir() else 0
        if seen != world:
            problems.append(
                f"output_dir {run_dir}: rank 0 sees {seen} of {world} ranks' marker files; it must be on a "
                "filesystem shared by all nodes (checkpoints are written by every rank)"
            )
    barrier()
    if rank == 0:
        for f in marker_dir.glob("rank-*"):
            f.unlink()
        marker_dir.rmdir()
    return problems


def _collective_check(world: int, device) -> tuple[list[str], float]:
    ones = torch.ones(4, device=device)
    dist.all_reduce(ones)
    problems = (
        [] if torch.allclose(ones, torch.full_like(ones, world)) else [f"all_reduce returned {ones.tolist()}"]
    )
    payload = torch.ones(16 * 1024 * 1024 // 4, device=device)  # 16 MiB
    dist.all_reduce(payload)
    t0 = time.perf_counter()
    for _ in range(3):
        dist.all_reduce(payload)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / 3
    bus_gbps = payload.numel() * 4 * 2 * (world - 1) / world / seconds / 1e9 if world > 1 else 0.0
    return problems, bus_gbps


def run_preflight(cfg: TrainConfig, config_path: str) -> int:
    device = local_device()
    on_gpu = device.type == "cuda"
    backend = resolve_backend(cfg.distributed.backend, device)
    dist.init_process_group(backend, timeout=timedelta(minutes=cfg.distributed.timeout_minutes))
    rank, world = dist.get_rank(), dist.get_world_size()
    problems = _local_checks(cfg, config_path, rank, world, on_gpu)
    problems += _shared_dir_check(Path(cfg.output_dir).resolve(), rank, world, dist.barrier)
    collective_problems, bus_gbps = _collective_check(world, device)
    problems += collective_problems
    gathered: list[list[str]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, problems)
    all_problems = [p for part in gathered for p in part]
    if rank == 0:
        gpus = torch.cuda.get_device_name() if on_gpu else "cpu"
        print(
            f"hermes-sft preflight: {world} ranks ({backend}, {gpus}); all_reduce bus bandwidth ~{bus_gbps:.1f} GB/s"
        )
        for p in all_problems:
            print(f"hermes-sft preflight: PROBLEM: {p}")
        print("hermes-sft preflight: " + ("FAILED" if all_problems else "OK"), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 2 if all_problems else 0
