"""``hermes-sft train CONFIG.yaml [key=value ...]``: one rank, N local ranks, a config check or a preflight.

hermes-sft train configs/tiny-cpu.yaml                          # one process
hermes-sft train configs/tiny-cpu.yaml --nproc-per-node 2       # two local ranks
torchrun --nproc-per-node 8 -m train.cli train CONFIG [k=v ...] # one rank per process (also srun, deepspeed)
hermes-sft train CONFIG --check [--world-size 64]               # validate + print resolved settings
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train.config import TrainConfig, batch_layout, load_train_config
from train.ds_config import template_path
from train.launch import apply_rank_env, spawn_local


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="train YAML (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-5"
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        metavar="N",
        help="start N local ranks (one per GPU; processes on CPU) and supervise them",
    )
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port for --nproc-per-node")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print the resolved settings and exit (no torch import)",
    )
    parser.add_argument(
        "--world-size", type=int, default=None, help="with --check: also check the batch split"
    )
    parser.add_argument(
        "--preflight",
        action="store_true",
        help="on every rank: dataset, shared writable output dir, GPUs, a collective; then exit",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.overrides)
    if args.check:
        print(settings_text(cfg, args.config, args.world_size))
        return 0
    if args.nproc_per_node:
        child = [
            "-m",
            "train.cli",
            "train",
            args.config,
            *args.overrides,
            *(["--preflight"] if args.preflight else []),
        ]
        return spawn_local(args.nproc_per_node, child, args.master_port)
    apply_rank_env(args.local_rank)
    # The command boundary: the preflight and the recipe load torch, transformers and PEFT (10-30 s), which
    # `--check`, `--nproc-per-node` (the supervisor) and the SLURM dry run must not pay for.
    if args.preflight:
        from train.preflight import run_preflight

        return run_preflight(cfg, args.config)
    from train.recipe import run_recipe

    return run_recipe(cfg, args.config)


def settings_text(cfg: TrainConfig, config_path: str, world_size: int | None = None) -> str:
    """The resolved settings as ``name = value`` lines (echoed by the SLURM scripts, which read output_dir)."""
    ds_path = template_path(cfg.distributed.deepspeed, Path(config_path).resolve().parent)
    model = f"preset {cfg.model.preset}" if cfg.model.preset else f"path {cfg.model.path}"
    if cfg.model.overrides:
        model += f" (overrides {cfg.model.overrides})"
    lora = (
        f"r={cfg.lora.r} alpha={cfg.lora.alpha} dropout={cfg.lora.dropout} on {','.join(cfg.lora.target_modules)}"
        if cfg.lora.enabled
        else "off (full fine-tuning)"
    )
    s = cfg.schedule
    rows = [
        ("config", config_path),
        ("output_dir", str(Path(cfg.output_dir).resolve())),
        ("model", model),
        ("lora", lora),
        ("objective", objective_text(cfg)),
        ("data", f"{cfg.data.path} (max_seq_len {cfg.data.max_seq_len or 'from manifest'})"),
        (
            "batch",
            f"global {cfg.batch.global_batch_size} rows, micro {cfg.batch.micro_batch_size} row(s) per rank",
        ),
    ]
    if world_size:
        layout = batch_layout(cfg.batch, world_size, cfg.distributed.sequence_parallel)
        sp = f", {layout.data_parallel} data-parallel x {layout.sequence_parallel} sequence-parallel"
        rows.append(
            (
                "grad_accum",
                f"{layout.grad_accum} (world size {world_size}{sp if layout.sequence_parallel > 1 else ''})",
            )
        )
    rows += [
        (
            "schedule",
            f"{s.kind}, {s.steps} steps, warmup {s.warmup_steps}, lr {cfg.optim.lr:g}, min ratio {s.min_lr_ratio:g}",
        ),
        (
            "optim",
            f"AdamW betas {cfg.optim.betas} wd {cfg.optim.weight_decay:g} clip {cfg.optim.grad_clip:g}",
        ),
        ("deepspeed", str(ds_path)),
        (
            "checkpoint",
            f"every {cfg.checkpoint.every_steps} steps, keep {cfg.checkpoint.keep_last}, "
            f"resume {cfg.checkpoint.resume}",
        ),
        ("seed", str(cfg.seed)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}} = {v}" for k, v in rows)


def objective_text(cfg: TrainConfig) -> str:
    if cfg.objective != "dpo":
        return "sft (cross-entropy on trained tokens)"
    d = cfg.dpo
    reference = d.reference if d.reference != "auto" else ("adapter" if cfg.lora.enabled else "precomputed")
    extra = f", label_smoothing {d.label_smoothing:g}" if d.label_smoothing else ""
    extra += f", rpo_alpha {d.rpo_alpha:g}" if d.rpo_alpha else ""
    return f"dpo ({d.loss_type}, beta {d.beta:g}{extra}; reference {reference})"
