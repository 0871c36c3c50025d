"""The SFT recipe: setup → train → save → cleanup, driving the DeepSpeed ZeRO-3 engine directly.

One process is one rank (``hermes-sft train`` under torchrun / srun / the deepspeed launcher, or
``--nproc-per-node N``). Every rank runs the same code; rank 0 also writes the run files and metrics.
The whole optimizer step is :meth:`SFTRecipe.train_step`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from data_recipes.tokenizer import load_tokenizer, save_tokenizer, template_fingerprint, tokenizer_fingerprint
from train import checkpoint as ckpt
from train import data as data_mod
from train import runtime
from train.config import TrainConfig, batch_layout, config_as_dict
from train.dpo import DPOObjective, check_objective
from train.ds_config import build_ds_config, load_template
from train.loss import backward_scale, micro_ce_sum
from train.metrics import FlopModel, MetricsWriter, device_peak_tflops, format_summary, plot_loss
from train.model import (
    apply_lora,
    build_model,
    load_model_config,
    model_fingerprint,
    param_counts,
    param_groups,
    resolve_attn,
    resolve_dtype,
)


class NonFiniteLossError(ValueError):
    """The loss of a step was NaN or inf; the step was not applied."""


@dataclass
class StepStats:
    loss: float
    grad_norm: float | None
    lr: float
    tokens: int
    trained_tokens: int
    sum_sq_lengths: int
    stop: bool
    extra: dict[str, Any] = field(default_factory=dict)
    """Objective-specific metrics (DPO: rewards, reward accuracy and margin, log-probs per side)."""


class SFTRecipe:
    """Supervised fine-tuning of a causal LM on a packed dataset with DeepSpeed ZeRO-3 (+ optional LoRA)."""

    def __init__(self, cfg: TrainConfig, config_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self.config_dir = Path(config_path).resolve().parent if config_path else None
        self.run_dir = Path(cfg.output_dir).resolve()
        self.step = self.rows_consumed = self.tokens_seen = self.trained_seen = 0
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.metrics: MetricsWriter | None = None
        self.objective: DPOObjective | None = None  # objective: dpo (train/dpo.py); None = the SFT loss
        self.eval_loss: float | None = None
        self.status = "setup"
        self._saved_step = -1
        self._times: list[float] = []
        self._flops: list[float] = []

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Distributed init, data, model + engine, resume; leaves the engine ready at ``self.step``."""
        self._t_start, self._started_at = time.perf_counter(), time.time()
        self._setup_distributed()
        self.stop = ckpt.StopRequest(self.run_dir / ckpt.STOP_FILE if self.rank == 0 else None)
        self.stop.install()  # a preemption during a long load still ends in a clean stop
        self._setup_data()
        self.hf_config = load_model_config(self.cfg.model)
        self.counts = param_counts(self.hf_config)  # meta device; before ZeRO-3 hooks are live
        self._check_model_fits_data()
        self.fingerprint = model_fingerprint(self.hf_config, self.cfg.lora)
        resume_from = self._resolve_resume()
        self._setup_engine(resume_from)
        if (
            self.cfg.objective == "dpo"
        ):  # before the checkpoint: a precomputed reference uses the initial weights
            self.objective = DPOObjective(self, self.cfg)
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self._on_rank0(self._write_run_files)
        self._setup_metrics()
        self.status = "ready"

    def _setup_distributed(self) -> None:
        import deepspeed

        warnings.filterwarnings(
            "ignore", message=r".*torch\.distributed\.\w+ is deprecated", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore", message=r".*`torch\.distributed\.\w+` is deprecated", category=FutureWarning
        )
        if not os.environ.get("HERMES_SFT_VERBOSE"):
            logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.on_gpu = torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.on_gpu:
            torch.cuda.set_device(local_rank)
        self.device = torch.device("cuda", local_rank) if self.on_gpu else torch.device("cpu")
        backend = self.cfg.distributed.backend
        if backend == "auto":
            backend = "nccl" if self.on_gpu else "gloo"
        deepspeed.init_distributed(
            dist_backend=backend, timeout=timedelta(minutes=self.cfg.distributed.timeout_minutes)
        )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.layout = batch_layout(self.cfg.batch, self.world)
        self._info(
            f"{self.world} rank(s), backend {backend}, global batch {self.layout.global_batch_size} = micro "
            f"{self.layout.micro_batch_size} x accumulation {self.layout.grad_accum} x {self.world} ranks"
        )

    def _setup_data(self) -> None:
        cfg = self.cfg
        # Rank 0 first: it may build the tokenizer cache, which the others then read.
        self.tokenizer = self._on_rank0(lambda: load_tokenizer(cfg.model.tokenizer), share=False)
        if self.rank != 0:
            self.tokenizer = load_tokenizer(cfg.model.tokenizer)
        self.manifest = data_mod.read_manifest(cfg.data.path)
        data_mod.check_manifest(self.manifest, self.tokenizer, cfg.data.path, cfg.data.max_seq_len)
        check_objective(self.manifest, cfg.objective, cfg.data.path)
        self.train_ds, self.eval_ds = data_mod.load_splits(
            cfg.data.path, cfg.data.train_split, cfg.data.eval_split
        )
        self.stream = data_mod.DataStream(len(self.train_ds), cfg.seed, cfg.data.shuffle)
        self.dataset_id = {
            "path": str(Path(cfg.data.path).resolve()),
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer),
            "template_fingerprint": template_fingerprint(),
            "config_hash": self.manifest.get("config_hash"),
            "num_rows": len(self.train_ds),
        }
        evals = len(self.eval_ds) if self.eval_ds is not None else 0
        self._info(f"data {cfg.data.path}: {len(self.train_ds):,} train rows, {evals:,} eval rows")

    def _check_model_fits_data(self) -> None:
        vocab, need = self.hf_config.vocab_size, len(self.tokenizer)
        if vocab < need:
            raise ValueError(f"the model's vocab_size {vocab} is smaller than the tokenizer's {need} ids")
        rows_max = self.manifest.get("max_seq_len") or 0
        positions = getattr(self.hf_config, "max_position_embeddings", rows_max)
        if rows_max > positions:
            raise ValueError(f"rows are up to {rows_max} tokens but the model supports {positions} positions")

    def _resolve_resume(self) -> Path | None:
        """Rank 0 decides (guarding the output dir against other runs); every rank gets the answer."""
        explicit = self.cfg.checkpoint.resume not in ("auto", "never")
        expected = {
            "model_fingerprint": self.fingerprint,
            "world_size": self.world,
            "dataset": self.dataset_id,
        }

        def decide() -> Path | None:
            path = ckpt.resolve_resume(self.run_dir, self.cfg.checkpoint.resume)
            if path is not None:
                ckpt.check_compatible(ckpt.read_state(path), path, expected, explicit)
            stale = ckpt.remove_stale_temporaries(self.run_dir)
            if stale:
                self._info(
                    f"removed incomplete checkpoint(s) from an interrupted save: {[p.name for p in stale]}"
                )
            stop_file = self.run_dir / ckpt.STOP_FILE
            if stop_file.exists() and stop_file.stat().st_mtime < self._started_at:  # from the run it stopped
                stop_file.unlink()
                self._info(f"removed {stop_file} left by the previous stop")
            return path

        return self._on_rank0(decide)

    def _setup_engine(self, resume_from: Path | None) -> None:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        cfg = self.cfg
        dtype, attn = resolve_dtype(cfg.model, self.on_gpu), resolve_attn(cfg.model, self.on_gpu)
        template = load_template(cfg.distributed.deepspeed, self.config_dir)
        bf16 = dtype == torch.bfloat16
        self.ds_config = build_ds_config(template, cfg, self.layout, self.hf_config.hidden_size, bf16)
        self._hf_ds = HfDeepSpeedConfig(self.ds_config)  # keeps transformers' zero.Init hooks alive
        torch.manual_seed(cfg.seed)
        model_cfg = cfg.model
        self.base_model_path = Path(cfg.model.path).resolve() if cfg.model.path else None
        config_built = cfg.model.path is None
        if cfg.lora.enabled and config_built:
            self.base_model_path = self.run_dir / "base_model"
            if resume_from is not None and runtime.has_weights(self.base_model_path):
                # The frozen base of record: the weights this run started from, not a new random init.
                model_cfg = runtime.replace_model_source(cfg.model, self.base_model_path)
        self._info(f"building the model ({dtype}, attention {attn}, ZeRO-3 over {self.world} ranks)")
        model = build_model(model_cfg, self.hf_config, dtype, attn)
        if cfg.lora.enabled:
            if config_built and model_cfg is cfg.model:
                runtime.write_base_model(model, self.hf_config, self.base_model_path, self.rank, dist.barrier)
            model = apply_lora(model, cfg.lora)
        self.peft_model = model if cfg.lora.enabled else None
        schedule = runtime.LRSchedule(cfg.schedule)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, cfg.optim.weight_decay),
            config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        self.engine.train()
        trainable = sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel()
            for p in self.engine.module.parameters()
            if p.requires_grad
        )
        self.flop_model = FlopModel(self.hf_config, self.counts, trainable if cfg.lora.enabled else 0)
        self.peak_tflops = device_peak_tflops(self.on_gpu, cfg.logging.peak_tflops)
        self._info(f"model: {self.counts['total']:,} parameters, {trainable:,} trainable")

    def _load_checkpoint(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(
            str(path), tag=ckpt.DS_TAG, load_module_strict=not self._exclude_frozen()
        )
        if load_path is None:
            raise ValueError(
                f"{path}: DeepSpeed could not load the checkpoint (is {path}/{ckpt.DS_TAG} complete?)"
            )
        state = ckpt.read_state(path)
        self.step, self.rows_consumed = state["step"], state["rows_consumed"]
        self.tokens_seen, self.trained_seen = state["tokens_seen"], state["trained_tokens_seen"]
        rng_file = path / "rng" / f"rank-{self.rank:05d}.json"
        if rng_file.is_file():
            ckpt.set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
        self.resumed_from = self.last_checkpoint = path
        self._saved_step = self.step
        self._info(f"resumed from {path} at step {self.step} ({self.rows_consumed:,} rows consumed)")

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "run.yaml").write_text(
            "# resolved training config (written by hermes-sft train)\n"
            + yaml.safe_dump(config_as_dict(self.cfg), sort_keys=False),
            encoding="utf-8",
        )
        ckpt.write_json(self.run_dir / "model_config.json", self.hf_config.to_dict())
        ckpt.write_json(self.run_dir / "data_manifest.json", self.manifest)
        save_tokenizer(self.tokenizer, self.run_dir / "tokenizer")

    def _setup_metrics(self) -> None:
        if self.rank == 0:
            self.metrics = MetricsWriter(
                self.run_dir, self.cfg.logging, self.cfg.schedule.steps, self.step, config_as_dict(self.cfg)
            )

    # ------------------------------------------------------------------------------------------ train

    def train(self) -> str:
        """Train until ``schedule.steps`` (status "finished") or a stop request ("stopped")."""
        cfg, total = self.cfg, self.cfg.schedule.steps
        self.status = "training"
        if self.step >= total:
            self._info(f"already at step {self.step} of {total}; nothing to train")
            self.status = "finished"
            return self.status
        self._info(f"training steps {self.step + 1}..{total}")
        while self.step < total:
            t0 = time.perf_counter()
            stats = self.train_step(self.next_micro_batches())
            self._advance(stats, time.perf_counter() - t0)
            every_eval = cfg.logging.eval_every_steps
            if every_eval and self.step % every_eval == 0 and self.step < total:
                self.evaluate()
            if stats.stop and self.step < total:
                self._info(
                    f"stop requested ({self.stop.signal or 'by another rank'}): saving step {self.step}"
                )
                self.save()
                self.status = "stopped"
                return self.status
            every = cfg.checkpoint.every_steps
            if every and self.step % every == 0 and self.step < total:
                self.save()
        self.evaluate()
        self.save()
        self.status = "finished"
        return self.status

    def next_micro_batches(self) -> list[data_mod.MicroBatch]:
        rows = self.stream.rows(self.rows_consumed, self.layout.global_batch_size)
        vocab = self.hf_config.vocab_size
        return [
            data_mod.collate(self.train_ds, r, vocab)
            for r in data_mod.rank_slices(rows, self.layout, self.rank)
        ]

    def train_step(self, micro_batches: list[data_mod.MicroBatch]) -> StepStats:
        """One optimizer step: forward/backward over this rank's micro-batches, then check and update."""
        return self.apply_update(self.accumulate(micro_batches))

    def accumulate(self, micro_batches: list[data_mod.MicroBatch]) -> StepStats:
        """Forward + backward of every micro-batch with the global token normalization (train/loss.py).
        Gradients are reduced and partitioned when it returns; the weights are not updated yet."""
        if self.objective is not None:  # DPO: the pair-normalized loss (train/dpo.py)
            return StepStats(
                grad_norm=None, lr=self.engine.get_lr()[0], **self.objective.accumulate(micro_batches)
            )
        local_trained = sum(mb.num_trained for mb in micro_batches)
        global_trained = int(self._all_reduce([local_trained])[0])
        scale = backward_scale(self.world, global_trained)
        ce_total, bad_rows = 0.0, []
        for i, mb in enumerate(micro_batches):
            ce_sum = micro_ce_sum(self.engine, mb, self.device)
            if not torch.isfinite(ce_sum):
                bad_rows += mb.row_ids
            self.engine.backward(ce_sum * scale, scale_wrt_gas=False)
            ce_total += float(ce_sum.detach())
            if i < len(micro_batches) - 1:
                self.engine.step()  # DeepSpeed counts micro-steps; only the boundary step updates
        tokens = sum(mb.num_tokens for mb in micro_batches)
        sq = sum(n * n for mb in micro_batches for n in mb.seq_lengths)
        totals = self._all_reduce(
            [0.0 if bad_rows else ce_total, tokens, sq, len(bad_rows), self.stop.local()]
        )
        if totals[3]:
            self._raise_nonfinite(bad_rows)
        return StepStats(
            loss=totals[0] / global_trained,
            grad_norm=None,
            lr=self.engine.get_lr()[0],
            tokens=int(totals[1]),
            trained_tokens=global_trained,
            sum_sq_lengths=int(totals[2]),
            stop=bool(totals[4]),
        )

    def apply_update(self, stats: StepStats) -> StepStats:
        """Clip and apply the optimizer step (DeepSpeed's boundary step), advance the LR schedule."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        stats.grad_norm = None if norm is None else float(norm)
        return stats

    def _advance(self, stats: StepStats, seconds: float) -> None:
        self.step += 1
        self.rows_consumed += self.layout.global_batch_size
        self.tokens_seen += stats.tokens
        self.trained_seen += stats.trained_tokens
        self.last_loss = stats.loss
        self.last_extra = stats.extra
        flops = self.flop_model.step_flops(stats.tokens, stats.trained_tokens, stats.sum_sq_lengths)
        self._times.append(seconds)
        self._flops.append(flops)
        if self.rank != 0 or self.metrics is None:
            return
        record = {
            "step": self.step,
            "loss": stats.loss,
            "lr": stats.lr,
            "grad_norm": stats.grad_norm,
            "tokens": stats.tokens,
            "trained_tokens": stats.trained_tokens,
            "trained_fraction": stats.trained_tokens / max(1, stats.tokens),
            "step_time_sec": seconds,
            "tokens_per_sec_per_device": stats.tokens / seconds / self.world,
            "mfu": self._mfu(flops, seconds),
            "epoch": self.rows_consumed / len(self.train_ds),
            **stats.extra,
        }
        if self.step % self.cfg.logging.every_steps == 0 or self.step == self.cfg.schedule.steps:
            self.metrics.log(record)
        self.metrics.progress(
            self.step,
            {
                "loss": f"{stats.loss:.4f}",
                "lr": f"{stats.lr:.2e}",
                "tok/s/dev": f"{record['tokens_per_sec_per_device']:.0f}",
                **{
                    k: f"{stats.extra[k]:.3f}"
                    for k in ("reward_margin", "reward_accuracy")
                    if k in stats.extra
                },
            },
        )

    def _mfu(self, flops: float, seconds: float) -> float | None:
        if not self.peak_tflops or seconds <= 0:
            return None
        return flops / seconds / self.world / (self.peak_tflops * 1e12)

    def _raise_nonfinite(self, bad_rows: list[int]) -> None:
        gathered: list[list[int]] = [[] for _ in range(self.world)]
        dist.all_gather_object(gathered, bad_rows)
        rows = sorted({r for part in gathered for r in part})
        where = f"resume from {self.last_checkpoint}" if self.last_checkpoint else "restart"
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step + 1} in train rows {rows} of {self.cfg.data.path}; the step was "
            f"not applied. Inspect the rows (`hermes-sft data inspect`), drop them or lower optim.lr, then {where}"
        )

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-level eval loss on the eval split (every rank runs the same number of forwards)."""
        if self.eval_ds is None:
            return None
        if self.objective is not None:
            return self._evaluate_objective()
        self.engine.eval()
        ce, n = 0.0, 0
        vocab = self.hf_config.vocab_size
        for rows, weight in data_mod.eval_slices(
            len(self.eval_ds), self.layout, self.rank, self.cfg.data.eval_max_rows
        ):
            mb = data_mod.collate(self.eval_ds, rows, vocab, weight=weight)
            ce += float(micro_ce_sum(self.engine, mb, self.device))
            n += mb.num_trained
        self.engine.train()
        ce_all, n_all = self._all_reduce([ce, n])
        self.eval_loss = ce_all / max(1.0, n_all)
        if self.metrics is not None:
            self.metrics.log(
                {"step": self.step, "eval_loss": self.eval_loss, "eval_trained_tokens": int(n_all)}
            )
        self._info(f"step {self.step}: eval loss {self.eval_loss:.4f} over {int(n_all):,} trained tokens")
        return self.eval_loss

    def _evaluate_objective(self) -> float | None:
        record = self.objective.evaluate()
        if record is None:
            return None
        self.eval_loss = record["eval_loss"]
        if self.metrics is not None:
            self.metrics.log({"step": self.step, **record})
        self._info(
            f"step {self.step}: eval loss {self.eval_loss:.4f}, reward accuracy {record['eval_reward_accuracy']:.3f}, "
            f"margin {record['eval_reward_margin']:.4f} over {record['eval_pairs']:,} pairs"
        )
        return self.eval_loss

    # ------------------------------------------------------------------------------------------- save

    def save(self) -> Path:
        """Checkpoint the current step on every rank (a no-op if this step is already saved)."""
        if self._saved_step == self.step and self.last_checkpoint is not None:
            return self.last_checkpoint
        t0 = time.perf_counter()
        files: dict[str, Any] = {"model_config.json": self.hf_config.to_dict()}
        if self.peft_model is not None:
            files["adapter_config.json"] = runtime.adapter_config(self.peft_model, self.base_model_path)
        self.last_checkpoint = ckpt.save_checkpoint(
            self.engine,
            self.run_dir,
            self.step,
            self._state(),
            files,
            rank=self.rank,
            keep_last=self.cfg.checkpoint.keep_last,
            exclude_frozen=self._exclude_frozen(),
            write_extra=self._write_adapter if self.peft_model is not None else None,
            barrier=dist.barrier,
        )
        self._saved_step = self.step
        self._info(f"saved {self.last_checkpoint} in {time.perf_counter() - t0:.1f} s")
        return self.last_checkpoint

    def _exclude_frozen(self) -> bool:
        return self.cfg.lora.enabled and not self.cfg.lora.save_frozen

    def _write_adapter(self, folder: Path) -> None:
        runtime.write_adapter(self.peft_model, folder, self.rank)

    def _state(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "format_version": 1,
            "step": self.step,
            "total_steps": cfg.schedule.steps,
            "rows_consumed": self.rows_consumed,
            "tokens_seen": self.tokens_seen,
            "trained_tokens_seen": self.trained_seen,
            "epoch": self.rows_consumed / len(self.train_ds),
            "loss": getattr(self, "last_loss", None),
            "world_size": self.world,
            "global_batch_size": self.layout.global_batch_size,
            "micro_batch_size": self.layout.micro_batch_size,
            "seed": cfg.seed,
            "ds_tag": ckpt.DS_TAG,
            "model_fingerprint": self.fingerprint,
            "model_source": {"path": str(Path(cfg.model.path).resolve())}
            if cfg.model.path
            else {"preset": cfg.model.preset},
            "base_model": str(self.base_model_path) if self.base_model_path else None,
            "lora": runtime.lora_state(cfg.lora, self._exclude_frozen()) if cfg.lora.enabled else None,
            "dataset": self.dataset_id,
        }

    # ---------------------------------------------------------------------------------------- cleanup

    def cleanup(self) -> dict[str, Any] | None:
        """Close sinks, write summary.json + loss.png and print the summary (rank 0); tear down."""
        if hasattr(self, "stop"):
            self.stop.uninstall()
        summary = None
        if self.rank == 0 and self.metrics is not None:
            self.metrics.close()
            summary = self._summary()
            ckpt.write_json(self.run_dir / "summary.json", summary)
            plot_loss(self.run_dir)
            print(f"\nhermes-sft train: {self.status}\n{format_summary(summary)}", flush=True)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        self._hf_ds = None
        return summary

    def _summary(self) -> dict[str, Any]:
        steady = self._times[1:] or self._times  # the first step includes warm-up work
        steady_flops = self._flops[1:] or self._flops
        seconds = sum(steady)
        tokens_per_step = self.tokens_seen / max(1, self.step)
        return {
            "status": self.status,
            "step": self.step,
            "total_steps": self.cfg.schedule.steps,
            "final_loss": getattr(self, "last_loss", None),
            **{f"final_{k}": v for k, v in getattr(self, "last_extra", {}).items() if k != "pairs"},
            "eval_loss": self.eval_loss,
            "tokens_seen": self.tokens_seen,
            "trained_tokens_seen": self.trained_seen,
            "steps_this_run": len(self._times),
            "mean_step_time_sec": seconds / len(steady) if steady else None,
            "tokens_per_sec_per_device": (tokens_per_step * len(steady) / seconds / self.world)
            if seconds
            else None,
            "mfu": self._mfu(sum(steady_flops), seconds) if seconds else None,
            "peak_tflops_per_device": self.peak_tflops,
            "wall_time_sec": time.perf_counter() - self._t_start,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "run_dir": str(self.run_dir),
            "world_size": self.world,
        }

    # ---------------------------------------------------------------------------------------- helpers

    def _all_reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def _on_rank0(self, fn, share: bool = True):
        """Run ``fn`` on rank 0 while the others wait. Any exception there is raised on every rank (a
        ValueError stays a ValueError), so a bad input never leaves ranks stuck in a collective.
        ``share``: broadcast the result to every rank."""
        outcome: tuple[str, Any] = ("ok", None)
        error: Exception | None = None
        if self.rank == 0:
            try:
                outcome = ("ok", fn())
            except Exception as err:
                error = err
                outcome = ("value_error" if isinstance(err, ValueError) else "error", str(err))
        if self.world > 1:
            box = [outcome if (self.rank == 0 and (share or outcome[0] != "ok")) else ("ok", None)]
            dist.broadcast_object_list(box, src=0)
            outcome = box[0] if self.rank != 0 else outcome
        if error is not None:
            raise error
        kind, value = outcome
        if kind == "value_error":
            raise ValueError(value)
        if kind == "error":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def _info(self, message: str) -> None:
        if getattr(self, "rank", 0) == 0:
            print(f"hermes-sft train: {message}", flush=True)


def run_recipe(cfg: TrainConfig, config_path: str | Path | None = None) -> int:
    """setup → train → cleanup; 0 when finished or stopped on request (SLURM requeues), else raises."""
    recipe = SFTRecipe(cfg, config_path)
    try:
        recipe.setup()
        recipe.train()
    except BaseException:
        recipe.status = "failed"
        raise
    finally:
        if recipe.status != "failed":
            recipe.cleanup()
        elif recipe.rank == 0 and recipe.metrics is not None:
            recipe.metrics.close()
    return 0
