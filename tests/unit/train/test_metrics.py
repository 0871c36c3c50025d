"""FLOPs / MFU arithmetic, peak lookup, metrics sinks, summary and loss.png."""

from __future__ import annotations

import pytest

from train.config import LoggingConfig
from train.metrics import (
    FlopModel,
    MetricsWriter,
    Throughput,
    format_summary,
    gpu_peak_tflops,
    plot_loss,
    read_metrics,
    run_summary,
    step_record,
)
from train.model import param_counts, preset_config
from train.progress import StepStats, TrainingProgress


def test_flops_per_token_for_llama31_70b():
    cfg = preset_config("llama-3.1-70b")
    counts = param_counts(cfg)
    model = FlopModel(cfg, counts)
    seq = 16384
    per_token = model.step_flops(seq, seq, seq * seq) / seq  # one sample filling the row, all trained
    assert per_token == pytest.approx(6 * counts["total"] - 6 * counts["embedding"] + 12 * 80 * 8192 * seq)
    # the usual 6N + 12 L d S (5.52e11 at 16k) also counts the embedding lookup, which is no matmul
    assert 6 * 70_553_706_496 + 12 * 80 * 8192 * seq == 552_171_257_856
    assert per_token == 552_171_257_856 - 6 * counts["embedding"]
    lora = FlopModel(cfg, counts, lora_params=1000)
    assert lora.step_flops(10, 0, 0) < model.step_flops(10, 0, 0)  # frozen weights: no weight gradient


def test_gpu_peak_lookup_prefers_the_longest_name():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_peak_tflops("Some Future GPU") is None


def test_metrics_writer_summary_and_plot(tmp_path):
    writer = MetricsWriter(tmp_path, LoggingConfig(progress=False), 3, 0, {"a": 1})
    for step, loss in ((1, 3.0), (2, 2.5), (3, 2.0)):
        writer.log({"step": step, "loss": loss, "lr": 1e-3, "grad_norm": None})
    writer.log({"step": 3, "eval_loss": 2.2})
    writer.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 3] and records[0]["loss"] == 3.0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert plot_loss(tmp_path).stat().st_size > 1000
    text = format_summary({"status": "finished", "step": 3, "total_steps": 3, "final_loss": 2.0, "mfu": 0.31})
    assert "finished" in text and "31.00%" in text and "2.0000" in text


def test_wandb_requested_but_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ValueError, match="pip install wandb"):
        MetricsWriter(tmp_path, LoggingConfig(progress=False, tensorboard=False, wandb=True), 1, 0, {})


def test_throughput_leaves_out_the_first_step_and_the_summary_reads_the_progress():
    throughput = Throughput(world=2, peak_tflops=1.0)
    for seconds, flops in ((10.0, 1e12), (2.0, 4e12), (2.0, 4e12)):  # step 1 is warm-up
        throughput.add(seconds, flops)
    progress = TrainingProgress(
        step=3, rows_consumed=12, tokens_seen=300, trained_tokens_seen=30, last_loss=1.5
    )
    summary = run_summary("finished", progress, 3, 1.7, throughput, run_dir="RUN", world_size=2)
    assert summary["steps_this_run"] == 3 and summary["mean_step_time_sec"] == 2.0
    assert summary["tokens_per_sec_per_device"] == 25.0  # 100 tokens/step x 2 steps / 4 s / 2 ranks
    assert summary["mfu"] == 1.0  # 8e12 FLOPs / 4 s / 2 ranks / 1 TFLOP/s
    assert (summary["step"], summary["final_loss"], summary["eval_loss"]) == (3, 1.5, 1.7)
    assert (summary["trained_tokens_seen"], summary["run_dir"]) == (30, "RUN")


def test_step_record_columns():
    stats = StepStats(
        loss=2.0, grad_norm=0.5, lr=1e-3, tokens=200, trained_tokens=50, sum_sq_lengths=0, stop=False
    )
    record = step_record(7, stats, seconds=4.0, world=2, mfu=None, epoch=0.25)
    assert list(record) == [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens",
        "trained_tokens",
        "trained_fraction",
        "step_time_sec",
        "tokens_per_sec_per_device",
        "mfu",
        "epoch",
    ]
    assert record["trained_fraction"] == 0.25 and record["tokens_per_sec_per_device"] == 25.0
