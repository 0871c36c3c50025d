"""Step time per real token on CPU: hermes-sft's trainer vs TRL's SFTTrainer, same data and model, one run.

    python bench/bench_train.py [--steps 12] [--warmup-steps 2] [--max-seq-len 512] [--out outputs/bench-train]

Both sides: 2 ranks, DeepSpeed ZeRO-3 over gloo, the ``tiny`` Llama preset (Llama-3.1 vocabulary,
16.5M parameters, fp32, SDPA), the bundled sample data built once by ``hermes-sft data build``, 4 packed
rows per optimizer step (1 row x 2 accumulation steps x 2 ranks), torch AdamW, the same LR schedule.
Each side times its own optimizer steps (ours: metrics.jsonl ``step_time_sec``; TRL: a callback at
every step end); the first ``--warmup-steps`` steps are dropped. Results go to OUT/bench_train.json and
a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from train.launch import free_port, local_torchrun

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False
        ).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({rc}):\n{tail}")
    return time.perf_counter() - t0


def ds_config_for_trl(out: Path) -> Path:
    """Our filled ZeRO-3 config with the values HF Trainer derives from its own arguments set to auto."""
    from train.config import batch_layout, load_train_config
    from train.ds_config import build_ds_config, load_template

    cfg = load_train_config(REPO / "configs" / "tiny-cpu.yaml")
    ds = build_ds_config(load_template("zero3"), cfg, batch_layout(cfg.batch, 2), 64, bf16=False)
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        ds[key] = "auto"
    ds["bf16"] = {"enabled": False}
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto", "torch_adam": True},
    }
    path = out / "trl_ds_config.json"
    path.write_text(json.dumps(ds, indent=2))
    return path


def summarize(
    name: str, times: list[float], tokens: list[int], losses: list[float], wall: float, skip: int
) -> dict:
    t, n = times[skip:], tokens[skip:]
    return {
        "trainer": name,
        "steps_timed": len(t),
        "sec_per_step": sum(t) / len(t),
        "real_tokens_per_step": sum(n) / len(n),
        "ms_per_1k_real_tokens": 1e6 * sum(t) / sum(n),
        "real_tokens_per_sec_per_rank": sum(n) / sum(t) / 2,
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "launch_wall_sec": wall,
    }


def lm_head_probe(data: Path, repeats: int = 3) -> dict:
    """One process, one packed row: forward + backward with the LM head on every position (what HF models
    compute by default) vs only on trained positions (what this trainer does), same model and row."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    from train.data import collate
    from train.model import preset_config

    torch.set_num_threads(1)
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_config(
        preset_config("tiny"), dtype=torch.float32, attn_implementation="sdpa"
    )
    mb = collate(load_from_disk(str(data))["train"], [0], model.config.vocab_size)
    every = torch.arange(mb.input_ids.shape[1] - 1)
    labels = torch.cat([mb.input_ids[0, 1:], mb.input_ids[0, :1]])[every]
    timings = {}
    for name, index, targets in (
        ("all positions", every, labels),
        ("trained positions", mb.target_index, mb.targets),
    ):
        best = float("inf")
        for _ in range(repeats):
            model.zero_grad()
            t0 = time.perf_counter()
            out = model(
                input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False, logits_to_keep=index
            )
            torch.nn.functional.cross_entropy(out.logits[0], targets, reduction="sum").backward()
            best = min(best, time.perf_counter() - t0)
        timings[name] = best
    return {"row_tokens": int(mb.input_ids.shape[1]), "trained_positions": mb.num_trained, "sec": timings}


def run_info() -> dict:
    """Command, machine and the versions of the packages both sides run on (every bench result opens with it)."""
    import deepspeed
    import torch
    import transformers
    import trl

    return {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--out", default=str(REPO / "outputs" / "bench-train"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.setdefault("HERMES_SFT_CACHE", str(REPO / ".cache" / "hermes"))
    py = sys.executable

    data = out / f"sample-{args.max_seq_len}"
    if not (data / "manifest.json").is_file():
        run(
            [
                py,
                "-m",
                "train.cli",
                "data",
                "build",
                "configs/data/sample.yaml",
                f"max_seq_len={args.max_seq_len}",
                "--out",
                str(data),
                "--quiet",
                "--overwrite",
            ],
            out / "build.log",
            env,
        )

    ours_dir = out / "hermes-run"
    shutil.rmtree(ours_dir, ignore_errors=True)  # every bench run trains afresh
    ours_wall = run(
        [
            py,
            "-m",
            "train.cli",
            "train",
            "configs/tiny-cpu.yaml",
            f"output_dir={ours_dir}",
            f"data.path={data}",
            f"schedule.steps={args.steps}",
            "checkpoint.every_steps=0",
            "checkpoint.resume=never",
            "logging.eval_every_steps=0",
            "data.eval_split=null",
            "logging.progress=false",
            "logging.tensorboard=false",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
        ],
        out / "hermes.log",
        env,
    )
    records = [json.loads(line) for line in (ours_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    ours = summarize(
        "hermes-sft (DeepSpeed engine, this repo)",
        [r["step_time_sec"] for r in steps],
        [r["tokens"] for r in steps],
        [r["loss"] for r in steps],
        ours_wall,
        args.warmup_steps,
    )

    trl_wall = run(
        local_torchrun(
            [
                "bench/trl_sft_worker.py",
                "--data",
                str(data),
                "--out",
                str(out),
                "--steps",
                str(args.steps),
                "--ds-config",
                str(ds_config_for_trl(out)),
            ],
            python=py,
        ),
        out / "trl.log",
        env,
    )
    t = json.loads((out / "trl.json").read_text())
    import trl

    trl_row = summarize(
        f"TRL {trl.__version__} SFTTrainer (HF Trainer + accelerate)",
        t["step_times"],
        t["step_tokens"],
        t["losses"],
        trl_wall,
        args.warmup_steps,
    )

    probe = lm_head_probe(data)
    result = {
        **run_info(),
        "setup": {
            "ranks": 2,
            "rows_per_step": 4,
            "max_seq_len": args.max_seq_len,
            "steps": args.steps,
            "timed_steps": args.steps - args.warmup_steps,
        },
        "results": [ours, trl_row],
        "lm_head_probe": probe,
    }
    (out / "bench_train.json").write_text(json.dumps(result, indent=2))
    print(
        "| trainer | s / step | real tokens / step | ms per 1k real tokens | tokens/s per rank | loss first→last | launch wall |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in result["results"]:
        lf = r["loss_first_last"]
        print(
            f"| {r['trainer']} | {r['sec_per_step']:.3f} | {r['real_tokens_per_step']:.0f} | "
            f"{r['ms_per_1k_real_tokens']:.1f} | {r['real_tokens_per_sec_per_rank']:.0f} | "
            f"{lf[0]:.3f} → {lf[1]:.3f} | {r['launch_wall_sec']:.0f} s |"
        )
    sec = probe["sec"]
    print(
        f"\nLM-head probe (1 process, 1 row of {probe['row_tokens']} tokens, {probe['trained_positions']} trained): "
        f"forward+backward {sec['all positions']:.3f} s with logits on every position, "
        f"{sec['trained positions']:.3f} s on trained positions only"
    )
    print(f"{json.dumps(result['versions'])}; {result['machine']}; results in {out / 'bench_train.json'}")


if __name__ == "__main__":
    main()
