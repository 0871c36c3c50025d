"""Metrics: FLOPs and MFU, metrics.jsonl / TensorBoard / W&B, progress bar, summary and loss.png.

FLOPs per optimizer step (matmul FLOPs, forward + backward, summed over ranks)::

    k * N_body * tokens                    k = 6 full, 4 LoRA (frozen weights get no weight gradient)
  + k * N_head * trained tokens            only trained positions go through the LM head
  + 6 * N_lora * tokens                    LoRA adapters
  + 12 * layers * d_attn * sum(l^2)        attention, per packed sample of length l (isolated samples)

MFU = FLOPs / step time / world size / peak FLOP/s of one device (bf16 dense for GPUs; for a CPU an
estimate from its threads, clock and SIMD width). Counting the attention over whole samples (not the
causal half) follows the usual convention (PaLM, torchtitan).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from train.progress import StepStats, TrainingProgress

# Dense bf16 TFLOP/s of one GPU (vendor datasheets, no sparsity). Longest matching name wins.
GPU_PEAK_TFLOPS = {
    "B200": 2250.0,
    "GB200": 2500.0,
    "B100": 1750.0,
    "H200": 989.0,
    "GH200": 989.0,
    "H100": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX A6000": 155.0,
    "V100": 125.0,
    "MI300X": 1307.0,
    "MI325X": 1307.0,
    "MI250X": 383.0,
}


def gpu_peak_tflops(name: str) -> float | None:
    hits = [k for k in GPU_PEAK_TFLOPS if k.lower() in name.lower()]
    return GPU_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def cpu_peak_tflops(threads: int) -> float | None:
    """threads x clock x fp32 FLOPs per cycle (2 FMA ports: AVX-512 64, AVX2 32, else 8)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()) if "flags" in info else set()
    if not mhz:
        return None
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    return threads * max(mhz) * 1e6 * per_cycle / 1e12


def device_peak_tflops(on_gpu: bool, override: float | None) -> float | None:
    if override:
        return override
    import torch

    if on_gpu:
        return gpu_peak_tflops(torch.cuda.get_device_name())
    return cpu_peak_tflops(torch.get_num_threads())


class FlopModel:
    """Matmul FLOPs of one optimizer step from the model shape (see the module docstring)."""

    def __init__(self, hf_config, counts: dict[str, int], lora_params: int = 0) -> None:
        self.lora = lora_params > 0
        self.body = counts["total"] - counts["embedding"] - counts["lm_head"]
        self.head = counts["lm_head"] or counts["embedding"]  # tied: the head reuses the embedding
        self.lora_params = lora_params
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        self.attn_coeff = 12 * hf_config.num_hidden_layers * heads * head_dim

    def step_flops(self, tokens: int, trained: int, sum_sq_lengths: int) -> float:
        k = 4 if self.lora else 6
        return (
            k * self.body * tokens
            + k * self.head * trained
            + 6 * self.lora_params * tokens
            + self.attn_coeff * sum_sq_lengths
        )


class Throughput:
    """Step times and FLOPs of this run → tokens/s per device and MFU. The run's averages leave out the
    first step, which includes warm-up work."""

    def __init__(self, world: int, peak_tflops: float | None) -> None:
        self.world = world
        self.peak_tflops = peak_tflops
        self.times: list[float] = []
        self.flops: list[float] = []

    def add(self, seconds: float, flops: float) -> None:
        self.times.append(seconds)
        self.flops.append(flops)

    def mfu(self, flops: float, seconds: float) -> float | None:
        if not self.peak_tflops or seconds <= 0:
            return None
        return flops / seconds / self.world / (self.peak_tflops * 1e12)

    def summary(self, tokens_per_step: float) -> dict[str, Any]:
        steady = self.times[1:] or self.times
        steady_flops = self.flops[1:] or self.flops
        seconds = sum(steady)
        return {
            "steps_this_run": len(self.times),
            "mean_step_time_sec": seconds / len(steady) if steady else None,
            "tokens_per_sec_per_device": (tokens_per_step * len(steady) / seconds / self.world)
            if seconds
            else None,
            "mfu": self.mfu(sum(steady_flops), seconds) if seconds else None,
            "peak_tflops_per_device": self.peak_tflops,
        }


def step_record(
    step: int, stats: StepStats, seconds: float, world: int, mfu: float | None, epoch: float
) -> dict[str, Any]:
    """One line of metrics.jsonl for a train step (the key order is the file's column order)."""
    return {
        "step": step,
        "loss": stats.loss,
        "lr": stats.lr,
        "grad_norm": stats.grad_norm,
        "tokens": stats.tokens,
        "trained_tokens": stats.trained_tokens,
        "trained_fraction": stats.trained_tokens / max(1, stats.tokens),
        "step_time_sec": seconds,
        "tokens_per_sec_per_device": stats.tokens / seconds / world,
        "mfu": mfu,
        "epoch": epoch,
        **stats.extra,
    }


def run_summary(
    status: str,
    progress: TrainingProgress,
    total_steps: int,
    eval_loss: float | None,
    throughput: Throughput,
    **where: Any,
) -> dict[str, Any]:
    """RUN_DIR/summary.json: how the run ended, what it trained, how fast. ``where``: wall_time_sec,
    resumed_from, checkpoint, run_dir and world_size, recorded as given."""
    return {
        "status": status,
        "step": progress.step,
        "total_steps": total_steps,
        "final_loss": progress.last_loss,
        **{f"final_{k}": v for k, v in progress.last_metrics.items() if k != "pairs"},  # DPO rewards
        "eval_loss": eval_loss,
        "tokens_seen": progress.tokens_seen,
        "trained_tokens_seen": progress.trained_tokens_seen,
        **throughput.summary(progress.tokens_seen / max(1, progress.step)),
        **where,
    }


class MetricsWriter:
    """Rank-0 sink for step metrics: JSON lines, TensorBoard, W&B and a progress bar."""

    def __init__(
        self, run_dir: Path, cfg, total_steps: int, start_step: int, run_config: dict[str, Any]
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = self._wandb = self._bar = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as err:
                raise ValueError(
                    "logging.wandb=true needs `pip install wandb` (or set logging.wandb=false)"
                ) from err
            # A stable id per run dir: a requeued job continues the same W&B run.
            run_id = "hermes-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
            self._wandb = wandb.init(
                project=cfg.wandb_project, name=run_dir.name, id=run_id, config=run_config, resume="allow"
            )
        if cfg.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        for key, value in record.items():
            if (
                self._tb is not None
                and key != "step"
                and isinstance(value, int | float)
                and math.isfinite(value)
            ):
                tag = key.replace("_", "/", 1) if key.startswith("eval_") else f"train/{key}"
                self._tb.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def log_step(self, record: dict[str, Any], write: bool) -> None:
        """A train step: its record to the sinks when ``write`` (logging.every_steps), always the bar."""
        if write:
            self.log(record)
        postfix = {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.2e}",
            "tok/s/dev": f"{record['tokens_per_sec_per_device']:.0f}",
            **{k: f"{record[k]:.3f}" for k in ("reward_margin", "reward_accuracy") if k in record},  # DPO
        }
        self.progress(record["step"], postfix)

    def progress(self, step: int, postfix: dict[str, str]) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(run_dir: Path) -> Path | None:
    """RUN_DIR/loss.png: train loss per step (latest value of each step after resumes) and eval loss."""
    records = read_metrics(run_dir)
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margins = {r["step"]: r for r in records if "reward_margin" in r}  # objective: dpo
    fig, axes = plt.subplots(
        1, 2 if margins else 1, figsize=(12 if margins else 7, 4), dpi=120, squeeze=False
    )
    ax = axes[0][0]
    steps = sorted(train)
    ax.plot(steps, [train[s] for s in steps], label="train loss", linewidth=1.2)
    if evals:
        es = sorted(evals)
        ax.plot(es, [evals[s] for s in es], "o-", label="eval loss", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("DPO loss (mean over pairs)" if margins else "cross-entropy (trained tokens)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    if margins:
        _plot_rewards(axes[0][1], margins)
    fig.tight_layout()
    out = run_dir / "loss.png"
    tmp = run_dir / f".loss-{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _plot_rewards(ax, records: dict[int, dict[str, Any]]) -> None:
    """DPO panel of loss.png: rewards per side, margin, and reward accuracy on a second axis."""
    steps = sorted(records)
    for key, label in (("rewards_chosen", "reward chosen"), ("rewards_rejected", "reward rejected"),
                       ("reward_margin", "margin")):  # fmt: skip
        ax.plot(steps, [records[s][key] for s in steps], label=label, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("beta x log-ratio")
    ax.grid(alpha=0.3)
    acc = ax.twinx()
    acc.plot(steps, [records[s]["reward_accuracy"] for s in steps], "k:", label="accuracy", linewidth=1)
    acc.set_ylim(0, 1)
    acc.set_ylabel("reward accuracy")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = acc.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table printed on rank 0."""
    rows = [
        ("status", summary.get("status")),
        ("steps", f"{summary.get('step')} / {summary.get('total_steps')}"),
        ("final loss", _fmt(summary.get("final_loss"))),
        ("eval loss", _fmt(summary.get("eval_loss"))),
        *(
            [
                (
                    "reward margin / accuracy",
                    f"{summary['final_reward_margin']:.4f} / {summary['final_reward_accuracy']:.3f}",
                )
            ]
            if "final_reward_margin" in summary
            else []
        ),
        (
            "tokens seen",
            f"{summary.get('tokens_seen', 0):,} ({summary.get('trained_tokens_seen', 0):,} trained)",
        ),
        ("tokens/s per device", _fmt(summary.get("tokens_per_sec_per_device"), ".1f")),
        ("MFU", _fmt(summary.get("mfu"), ".2%")),
        ("wall time", f"{summary.get('wall_time_sec', 0):.1f} s"),
        ("checkpoint", summary.get("checkpoint")),
        ("run dir", summary.get("run_dir")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
