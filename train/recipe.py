"""The SFT recipe: setup → train → save → cleanup, driving the DeepSpeed ZeRO-3 engine directly.

One process is one rank (``hermes-sft train`` under torchrun / srun / the deepspeed launcher, or
``--nproc-per-node N``). Every rank runs the same code; rank 0 also writes the run files and metrics.
The whole optimizer step is :meth:`SFTRecipe.train_step`.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from data_recipes.tokenizer import load_tokenizer, save_tokenizer
from train import checkpoint as ckpt
from train import data as data_mod
from train import sequence_parallel as sp_mod
from train.config import BatchLayout, TrainConfig, batch_layout, config_as_dict
from train.distributed import all_reduce_sum, local_device, on_rank0, quiet_deepspeed, resolve_backend
from train.dpo import DPOObjective, check_objective
from train.ds_config import build_ds_config, load_template
from train.fileio import write_json
from train.lora import adapter_config, apply_lora, lora_state, write_adapter
from train.loss import backward_scale, micro_objective, nonfinite_loss_error
from train.metrics import (
    FlopModel,
    MetricsWriter,
    Throughput,
    device_peak_tflops,
    format_summary,
    plot_loss,
    run_summary,
    step_record,
)
from train.model import (
    build_model,
    check_model_fits_data,
    count_trainable,
    has_weights,
    load_model_config,
    model_fingerprint,
    param_counts,
    replace_model_source,
    resolve_dtype,
    write_base_model,
)
from train.optim import LRSchedule, param_groups
from train.progress import StepStats, TrainingProgress


class SFTRecipe:
    """Supervised fine-tuning of a causal LM on a packed dataset with DeepSpeed ZeRO-3 (+ optional LoRA)."""

    def __init__(self, cfg: TrainConfig, config_path: str | Path | None = None) -> None:
        self.cfg = cfg
        self.config_dir = Path(config_path).resolve().parent if config_path else None
        self.run_dir = Path(cfg.output_dir).resolve()
        self.status = "setup"
        self.progress = TrainingProgress()
        self._t_start = self._started_at = 0.0  # set when setup starts
        # distributed: one rank of one until _setup_distributed knows better
        self.rank, self.world = 0, 1
        self.on_gpu = False
        self.device = torch.device("cpu")
        self.layout: BatchLayout | None = None
        self.sp: sp_mod.SPGroup | None = None  # this rank's sequence-parallel group (None = SP off)
        self.stop = ckpt.StopRequest()  # replaced (with rank 0's stop file) and installed by setup
        # data (_read_inputs, _setup_data)
        self.manifest: dict[str, Any] = {}
        self.ds_template: dict[str, Any] = {}
        self.tokenizer = self.train_ds = self.eval_ds = None
        self.stream: data_mod.DataStream | None = None
        self.dataset_id: dict[str, Any] = {}
        # model and engine (setup, _setup_engine)
        self.hf_config = self.engine = self.peft_model = None  # PretrainedConfig, DeepSpeedEngine, PeftModel
        self._hf_ds = None  # HfDeepSpeedConfig: keeps transformers' zero.Init hooks alive with the engine
        self.counts: dict[str, int] = {}
        self.fingerprint = ""
        self.ds_config: dict[str, Any] = {}
        self.base_model_path: Path | None = None
        self.flop_model: FlopModel | None = None
        # outcome
        self.metrics: MetricsWriter | None = None  # rank 0 only
        self.objective: DPOObjective | None = None  # objective: dpo (train/dpo.py); None = the SFT loss
        self.throughput = Throughput(world=1, peak_tflops=None)
        self.eval_loss: float | None = None
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self._saved_step = -1

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Distributed init, data, model + engine, resume; leaves the engine ready at ``progress.step``."""
        self._t_start, self._started_at = time.perf_counter(), time.time()
        self._read_inputs()
        self._setup_distributed()
        self.stop = ckpt.StopRequest(self.run_dir / ckpt.STOP_FILE if self.rank == 0 else None)
        self.stop.install()  # a preemption during a long load still ends in a clean stop
        self._setup_data()
        self.hf_config = load_model_config(self.cfg.model)
        self.counts = param_counts(self.hf_config)  # meta device; before ZeRO-3 hooks are live
        check_model_fits_data(self.hf_config, len(self.tokenizer), self.manifest.get("max_seq_len") or 0)
        self.fingerprint = model_fingerprint(self.hf_config, self.cfg.lora)
        resume_from = self._resolve_resume()
        self._setup_engine(resume_from)
        self.objective = DPOObjective(self) if self.cfg.objective == "dpo" else None
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        on_rank0(self._write_run_files, self.rank, self.world)
        if self.rank == 0:
            cfg = self.cfg
            self.metrics = MetricsWriter(
                self.run_dir, cfg.logging, cfg.schedule.steps, self.progress.step, config_as_dict(cfg)
            )
        self.status = "ready"

    def _read_inputs(self) -> None:
        """The dataset manifest and the DeepSpeed template: plain file reads, done before distributed init
        so a wrong path fails at once with its own message."""
        self.manifest = check_objective(data_mod.read_manifest(self.cfg.data.path), self.cfg)
        self.ds_template = load_template(self.cfg.distributed.deepspeed, self.config_dir)

    def _setup_distributed(self) -> None:
        import deepspeed

        quiet_deepspeed()
        self.device = local_device()
        self.on_gpu = self.device.type == "cuda"
        backend = resolve_backend(self.cfg.distributed.backend, self.device)
        deepspeed.init_distributed(
            dist_backend=backend, timeout=timedelta(minutes=self.cfg.distributed.timeout_minutes)
        )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.layout = batch_layout(self.cfg.batch, self.world, self.cfg.distributed.sequence_parallel)
        self.sp = sp_mod.init_groups(self.layout.sequence_parallel, self.world, self.rank)
        self._info(
            f"{self.world} rank(s), backend {backend}, global batch {self.layout.global_batch_size} = micro "
            f"{self.layout.micro_batch_size} x accumulation {self.layout.grad_accum} x {sp_mod.describe(self.layout)}"
        )

    def _setup_data(self) -> None:
        cfg = self.cfg
        # Rank 0 first: it may build the tokenizer cache, which the others then read.
        self.tokenizer = on_rank0(
            lambda: load_tokenizer(cfg.model.tokenizer), self.rank, self.world, share=False
        )
        if self.rank != 0:
            self.tokenizer = load_tokenizer(cfg.model.tokenizer)
        data_mod.check_manifest(self.manifest, self.tokenizer, cfg.data.path, cfg.data.max_seq_len)
        self.train_ds, self.eval_ds = data_mod.load_splits(
            cfg.data.path, cfg.data.train_split, cfg.data.eval_split
        )
        self.stream = data_mod.DataStream(len(self.train_ds), cfg.seed, cfg.data.shuffle)
        self.dataset_id = data_mod.dataset_identity(
            cfg.data.path, self.tokenizer, self.manifest, len(self.train_ds)
        )
        evals = len(self.eval_ds) if self.eval_ds is not None else 0
        self._info(f"data {cfg.data.path}: {len(self.train_ds):,} train rows, {evals:,} eval rows")

    def _resolve_resume(self) -> Path | None:
        """Rank 0 decides (guarding the output dir against other runs); every rank gets the answer."""
        expected = dict(model_fingerprint=self.fingerprint, world_size=self.world, dataset=self.dataset_id)

        def decide() -> Path | None:
            path, notes = ckpt.prepare_resume(
                self.run_dir, self.cfg.checkpoint.resume, expected, self._started_at
            )
            for note in notes:
                self._info(note)
            return path

        return on_rank0(decide, self.rank, self.world)

    def _setup_engine(self, resume_from: Path | None) -> None:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        cfg = self.cfg
        dtype, seq_len = resolve_dtype(cfg.model, self.on_gpu), self.manifest.get("max_seq_len")
        attn = sp_mod.model_attention(cfg.model, self.hf_config, self.on_gpu, seq_len, self.sp, self._info)
        bf16 = dtype == torch.bfloat16
        self.ds_config = build_ds_config(self.ds_template, cfg, self.layout, self.hf_config.hidden_size, bf16)
        self._hf_ds = HfDeepSpeedConfig(self.ds_config)
        torch.manual_seed(cfg.seed)
        model = self._build_model(dtype, attn, resume_from)
        self.peft_model = model if cfg.lora.enabled else None
        schedule = LRSchedule(cfg.schedule)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, cfg.optim.weight_decay),
            config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        self.engine.train()
        trainable = count_trainable(self.engine.module)
        self.flop_model = FlopModel(self.hf_config, self.counts, trainable if cfg.lora.enabled else 0)
        self.throughput = Throughput(self.world, device_peak_tflops(self.on_gpu, cfg.logging.peak_tflops))
        self._info(f"model: {self.counts['total']:,} parameters, {trainable:,} trainable")

    def _build_model(self, dtype: torch.dtype, attn: str, resume_from: Path | None) -> torch.nn.Module:
        """The model under ZeRO-3, wrapped in LoRA when enabled. A config-built LoRA run writes its random
        base to RUN_DIR/base_model once and reloads it from there on resume."""
        cfg = self.cfg
        model_cfg = cfg.model
        self.base_model_path = Path(cfg.model.path).resolve() if cfg.model.path else None
        config_built = cfg.model.path is None
        if cfg.lora.enabled and config_built:
            self.base_model_path = self.run_dir / "base_model"
            if resume_from is not None and has_weights(self.base_model_path):
                # The frozen base of record: the weights this run started from, not a new random init.
                model_cfg = replace_model_source(cfg.model, self.base_model_path)
        self._info(f"building the model ({dtype}, attention {attn}, ZeRO-3 over {self.world} ranks)")
        model = build_model(model_cfg, self.hf_config, dtype, attn)
        if cfg.lora.enabled:
            if config_built and model_cfg is cfg.model:
                write_base_model(model, self.hf_config, self.base_model_path, self.rank, dist.barrier)
            model = apply_lora(model, cfg.lora)
        return model

    def _load_checkpoint(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(
            str(path), tag=ckpt.DS_TAG, load_module_strict=not self._exclude_frozen()
        )
        if load_path is None:
            raise ValueError(
                f"{path}: DeepSpeed could not load the checkpoint (is {path}/{ckpt.DS_TAG} complete?)"
            )
        self.progress.load_state_dict(ckpt.read_state(path))
        rng_file = path / "rng" / f"rank-{self.rank:05d}.json"
        if rng_file.is_file():
            ckpt.set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
        self.resumed_from = self.last_checkpoint = path
        self._saved_step = self.progress.step
        self._info(
            f"resumed from {path} at step {self.progress.step} ({self.progress.rows_consumed:,} rows consumed)"
        )

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "run.yaml").write_text(
            "# resolved training config (written by hermes-sft train)\n"
            + yaml.safe_dump(config_as_dict(self.cfg), sort_keys=False),
            encoding="utf-8",
        )
        write_json(self.run_dir / "model_config.json", self.hf_config.to_dict())
        write_json(self.run_dir / "data_manifest.json", self.manifest)
        save_tokenizer(self.tokenizer, self.run_dir / "tokenizer")

    # ------------------------------------------------------------------------------------------ train

    def train(self) -> str:
        """Train until ``schedule.steps`` (status "finished") or a stop request ("stopped")."""
        cfg, total, progress = self.cfg, self.cfg.schedule.steps, self.progress
        self.status = "training"
        if progress.step >= total:
            self._info(f"already at step {progress.step} of {total}; nothing to train")
            self.status = "finished"
            return self.status
        self._info(f"training steps {progress.step + 1}..{total}")
        while progress.step < total:
            t0 = time.perf_counter()
            stats = self.train_step(self.next_micro_batches())
            self._advance(stats, time.perf_counter() - t0)
            every_eval = cfg.logging.eval_every_steps
            if every_eval and progress.step % every_eval == 0 and progress.step < total:
                self.evaluate()
            if stats.stop and progress.step < total:
                self._info(
                    f"stop requested ({self.stop.signal or 'by another rank'}): saving step {progress.step}"
                )
                self.save()
                self.status = "stopped"
                return self.status
            every = cfg.checkpoint.every_steps
            if every and progress.step % every == 0 and progress.step < total:
                self.save()
        self.evaluate()
        self.save()
        self.status = "finished"
        return self.status

    def next_micro_batches(self) -> list[data_mod.MicroBatch]:
        rows = self.stream.rows(self.progress.rows_consumed, self.layout.global_batch_size)
        vocab = self.hf_config.vocab_size
        return [
            sp_mod.local_slice(data_mod.collate(self.train_ds, r, vocab), self.sp)
            for r in data_mod.rank_slices(rows, self.layout, self.rank)
        ]

    def train_step(self, micro_batches: list[data_mod.MicroBatch]) -> StepStats:
        """One optimizer step: forward/backward over this rank's micro-batches, then check and update."""
        return self.apply_update(self.accumulate(micro_batches))

    def accumulate(self, micro_batches: list[data_mod.MicroBatch]) -> StepStats:
        """Forward + backward of every micro-batch with the global token normalization (train/loss.py).
        Gradients are reduced and partitioned when it returns; the weights are not updated yet."""
        if self.objective is not None:  # DPO: the pair-normalized loss (train/dpo.py)
            return self.objective.accumulate(micro_batches)
        local_trained = sum(mb.num_trained for mb in micro_batches)
        global_trained = int(all_reduce_sum(self.device, [local_trained])[0])
        scale = backward_scale(self.world, global_trained)
        ce_total, bad_rows, tile = 0.0, [], self.cfg.loss.tile_tokens
        for i, mb in enumerate(micro_batches):
            objective, ce_sum = micro_objective(self.engine, mb, self.device, tile, scale)
            if not torch.isfinite(ce_sum):
                bad_rows += mb.row_ids
            self.engine.backward(objective, scale_wrt_gas=False)
            ce_total += float(ce_sum.detach())
            if i < len(micro_batches) - 1:
                self.engine.step()  # DeepSpeed counts micro-steps; only the boundary step updates
        tokens = sum(mb.num_tokens for mb in micro_batches)
        sq = sum(n * n for mb in micro_batches for n in mb.seq_lengths)
        totals = all_reduce_sum(
            self.device, [0.0 if bad_rows else ce_total, tokens, sq, len(bad_rows), self.stop.local()]
        )
        if totals[3]:
            self._raise_nonfinite(bad_rows)
        return StepStats(
            loss=totals[0] / global_trained,
            grad_norm=None,
            lr=self.engine.get_lr()[0],
            tokens=int(totals[1]),
            trained_tokens=global_trained,
            sum_sq_lengths=int(totals[2]) // self.layout.sequence_parallel,  # an SP group shares its rows
            stop=bool(totals[4]),
        )

    def apply_update(self, stats: StepStats) -> StepStats:
        """Clip and apply the optimizer step (DeepSpeed's boundary step), advance the LR schedule."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        stats.grad_norm = None if norm is None else float(norm)
        return stats

    def _advance(self, stats: StepStats, seconds: float) -> None:
        self.progress.advance(stats, self.layout.global_batch_size)
        flops = self.flop_model.step_flops(stats.tokens, stats.trained_tokens, stats.sum_sq_lengths)
        self.throughput.add(seconds, flops)
        if self.metrics is None:  # not rank 0
            return
        step = self.progress.step
        mfu = self.throughput.mfu(flops, seconds)
        record = step_record(step, stats, seconds, self.world, mfu, self.progress.epoch(len(self.train_ds)))
        self.metrics.log_step(
            record, write=step % self.cfg.logging.every_steps == 0 or step == self.cfg.schedule.steps
        )

    def _raise_nonfinite(self, bad_rows: list[int]) -> None:
        gathered: list[list[int]] = [[] for _ in range(self.world)]
        dist.all_gather_object(gathered, bad_rows)
        rows = sorted({r for part in gathered for r in part})
        raise nonfinite_loss_error(self.progress.step + 1, rows, self.cfg.data.path, self.last_checkpoint)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-level eval loss on the eval split (every rank runs the same number of forwards)."""
        if self.eval_ds is None or self.objective is not None:  # DPO: train/dpo.py evaluates the pairs
            return None if self.eval_ds is None else self.objective.evaluate()
        self.engine.eval()
        ce, n = 0.0, 0
        vocab = self.hf_config.vocab_size
        for rows, weight in data_mod.eval_slices(
            len(self.eval_ds), self.layout, self.rank, self.cfg.data.eval_max_rows
        ):
            mb = sp_mod.local_slice(data_mod.collate(self.eval_ds, rows, vocab, weight=weight), self.sp)
            ce += float(micro_objective(self.engine, mb, self.device, self.cfg.loss.tile_tokens)[1])
            n += mb.num_trained
        self.engine.train()
        ce_all, n_all = all_reduce_sum(self.device, [ce, n])
        self.eval_loss = ce_all / max(1.0, n_all)
        if self.metrics is not None:
            self.metrics.log(
                {"step": self.progress.step, "eval_loss": self.eval_loss, "eval_trained_tokens": int(n_all)}
            )
        self._info(
            f"step {self.progress.step}: eval loss {self.eval_loss:.4f} over {int(n_all):,} trained tokens"
        )
        return self.eval_loss

    # ------------------------------------------------------------------------------------------- save

    def save(self) -> Path:
        """Checkpoint the current step on every rank (a no-op if this step is already saved)."""
        step = self.progress.step
        if self._saved_step == step and self.last_checkpoint is not None:
            return self.last_checkpoint
        t0 = time.perf_counter()
        files: dict[str, Any] = {"model_config.json": self.hf_config.to_dict()}
        if self.peft_model is not None:
            files["adapter_config.json"] = adapter_config(self.peft_model, self.base_model_path)
        self.last_checkpoint = ckpt.save_checkpoint(
            self.engine,
            self.run_dir,
            step,
            self._state(),
            files,
            rank=self.rank,
            keep_last=self.cfg.checkpoint.keep_last,
            exclude_frozen=self._exclude_frozen(),
            write_extra=self._write_adapter if self.peft_model is not None else None,
            barrier=dist.barrier,
        )
        self._saved_step = step
        self._info(f"saved {self.last_checkpoint} in {time.perf_counter() - t0:.1f} s")
        return self.last_checkpoint

    def _exclude_frozen(self) -> bool:
        return self.cfg.lora.enabled and not self.cfg.lora.save_frozen

    def _write_adapter(self, folder: Path) -> None:
        write_adapter(self.peft_model, folder, self.rank)

    def _state(self) -> dict[str, Any]:
        """hermes_state.json: the progress counters plus what a resume checks and export reads."""
        cfg = self.cfg
        return {
            "format_version": 1,
            **self.progress.state_dict(),
            "total_steps": cfg.schedule.steps,
            "epoch": self.progress.epoch(len(self.train_ds)),
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
            "lora": lora_state(cfg.lora, self._exclude_frozen()) if cfg.lora.enabled else None,
            "dataset": self.dataset_id,
        }

    # ---------------------------------------------------------------------------------------- cleanup

    def cleanup(self) -> dict[str, Any] | None:
        """Close sinks, write summary.json + loss.png and print the summary (rank 0); tear down."""
        self.stop.uninstall()
        summary = None
        if self.metrics is not None:  # rank 0
            self.metrics.close()
            summary = run_summary(
                self.status,
                self.progress,
                self.cfg.schedule.steps,
                self.eval_loss,
                self.throughput,
                wall_time_sec=time.perf_counter() - self._t_start,
                resumed_from=str(self.resumed_from) if self.resumed_from else None,
                checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
                run_dir=str(self.run_dir),
                world_size=self.world,
            )
            write_json(self.run_dir / "summary.json", summary)
            plot_loss(self.run_dir)
            print(f"\nhermes-sft train: {self.status}\n{format_summary(summary)}", flush=True)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        self._hf_ds = None
        return summary

    def close_after_failure(self) -> None:
        """Flush what rank 0 logged so far. Never raises: the error that ended the run is the one the user
        must see, not a follow-up from the cleanup."""
        try:
            self.stop.uninstall()
            if self.metrics is not None:
                self.metrics.close()
        except Exception as err:  # reported; the original error propagates
            print(
                f"hermes-sft train: cleanup after the failure also failed: {err}", file=sys.stderr, flush=True
            )

    # ---------------------------------------------------------------------------------------- helpers

    def _info(self, message: str) -> None:
        if self.rank == 0:
            print(f"hermes-sft train: {message}", flush=True)


def run_recipe(cfg: TrainConfig, config_path: str | Path | None = None) -> int:
    """setup → train → cleanup; 0 when finished or stopped on request (SLURM requeues), else raises the
    error that ended the run."""
    recipe = SFTRecipe(cfg, config_path)
    try:
        recipe.setup()
        recipe.train()
    except BaseException:
        recipe.status = "failed"
        recipe.close_after_failure()
        raise
    recipe.cleanup()
    return 0
