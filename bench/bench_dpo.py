"""DPO step time per pair on CPU: hermes-sft's ``objective: dpo`` vs TRL's DPOTrainer, same pairs and model.

    python bench/bench_dpo.py [--steps 10] [--warmup-steps 2] [--max-seq-len 1024] [--out outputs/bench-dpo]

Both sides: 2 ranks, DeepSpeed ZeRO-3 over gloo, the ``tiny`` Llama preset (fp32, SDPA) with a LoRA adapter
(r 8, alpha 16, every projection), the reference = the same model with the adapter disabled, sigmoid DPO with
beta 0.1, torch AdamW, cosine LR, 2 accumulation steps. The pairs are the bundled preference samples, built
once by ``hermes-sft data build`` (configs/data/sample-preference.yaml); TRL gets the very same token ids
(bench/trl_dpo_worker.py). Ours packs whole pairs into rows of ``--max-seq-len`` tokens (4 rows per step);
TRL pads ``--trl-pairs-per-micro`` pairs per micro-batch. Each side times its own optimizer steps; the first
``--warmup-steps`` are dropped; the figure compared is seconds per pair. Results go to OUT/bench_dpo.json
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench_train import ds_config_for_trl, run, run_info

from train.launch import free_port, local_torchrun

REPO = Path(__file__).resolve().parents[1]


def summarize(name: str, times: list[float], pairs: list[int], wall: float, skip: int, extra: dict) -> dict:
    t, n = times[skip:], pairs[skip:]
    return {
        "trainer": name,
        "steps_timed": len(t),
        "sec_per_step": sum(t) / len(t),
        "pairs_per_step": sum(n) / len(n),
        "ms_per_pair": 1e3 * sum(t) / sum(n),
        "launch_wall_sec": wall,
        **extra,
    }


def ours(args, data: Path, out: Path, env: dict[str, str]) -> dict:
    run_dir = out / "hermes-dpo-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    wall = run(
        [sys.executable, "-m", "train.cli", "train", "configs/tiny-cpu-dpo.yaml", f"output_dir={run_dir}",
         f"data.path={data}", f"data.max_seq_len={args.max_seq_len}", f"schedule.steps={args.steps}",
         "checkpoint.every_steps=0", "checkpoint.resume=never", "logging.eval_every_steps=0", "data.eval_split=null",
         "logging.progress=false", "logging.tensorboard=false", "--nproc-per-node", "2", "--master-port",
         str(free_port())],
        out / "hermes.log", env,
    )  # fmt: skip
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    extra = {
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]],
        "margin_last": steps[-1]["reward_margin"],
    }
    return summarize(
        "hermes-sft objective: dpo (packed pairs)",
        [r["step_time_sec"] for r in steps], [r["pairs"] for r in steps], wall, args.warmup_steps, extra,
    )  # fmt: skip


def theirs(args, data: Path, out: Path, env: dict[str, str]) -> dict:
    import trl

    wall = run(
        local_torchrun(
            ["bench/trl_dpo_worker.py", "--data", str(data), "--out", str(out), "--steps", str(args.steps),
             "--ds-config", str(ds_config_for_trl(out)), "--pairs-per-micro", str(args.trl_pairs_per_micro)],
            python=sys.executable,
        ),
        out / "trl.log", env,
    )  # fmt: skip
    t = json.loads((out / "trl_dpo.json").read_text())
    losses = [r["loss"] for r in t["logs"] if "loss" in r]
    margins = [r["rewards/margins"] for r in t["logs"] if "rewards/margins" in r]
    extra = {
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "margin_last": margins[-1] if margins else None,
    }
    return summarize(
        f"TRL {trl.__version__} DPOTrainer (padded pairs)",
        t["step_times"], t["pairs_per_step"], wall, args.warmup_steps, extra,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--trl-pairs-per-micro", type=int, default=4)
    p.add_argument("--out", default=str(REPO / "outputs" / "bench-dpo"))
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.setdefault("HERMES_SFT_CACHE", str(REPO / ".cache" / "hermes"))
    data = out / f"pairs-{args.max_seq_len}"
    if not (data / "manifest.json").is_file():
        run([sys.executable, "-m", "train.cli", "data", "build", "configs/data/sample-preference.yaml",
             f"max_seq_len={args.max_seq_len}", "validation_fraction=0", "--out", str(data), "--quiet", "--overwrite"],
            out / "build.log", env)  # fmt: skip
    rows = [ours(args, data, out, env), theirs(args, data, out, env)]
    result = {
        **run_info(),
        "setup": {
            "ranks": 2,
            "max_seq_len": args.max_seq_len,
            "steps": args.steps,
            "timed_steps": args.steps - args.warmup_steps,
        },
        "results": rows,
        "ratio_ours_over_trl_per_pair": rows[0]["ms_per_pair"] / rows[1]["ms_per_pair"],
    }
    (out / "bench_dpo.json").write_text(json.dumps(result, indent=2))
    print(
        "| trainer | s / step | pairs / step | ms per pair | loss first→last | margin (last step) | launch wall |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lf = r["loss_first_last"] or [float("nan")] * 2
        print(
            f"| {r['trainer']} | {r['sec_per_step']:.3f} | {r['pairs_per_step']:.1f} | {r['ms_per_pair']:.1f} | "
            f"{lf[0]:.4f} → {lf[1]:.4f} | {r['margin_last']:.3f} | {r['launch_wall_sec']:.0f} s |"
        )
    print(f"\nours / TRL time per pair: {result['ratio_ours_over_trl_per_pair']:.2f}x")
    print(f"{json.dumps(result['versions'])}; {result['machine']}; results in {out / 'bench_dpo.json'}")


if __name__ == "__main__":
    main()
