"""One rank of TRL's SFTTrainer on our packed dataset, for bench/bench_train.py (not a supported trainer).

    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 bench/trl_sft_worker.py --data DIR --out DIR --steps N \\
        --ds-config ds.json --lr 3e-3 --warmup 2

Same model (the ``tiny`` preset, seed 42, fp32, SDPA), same rows (pre-tokenized, packed, with our labels),
same global batch (1 row x 2 accumulation steps x 2 ranks), same ZeRO-3 buckets, padding-free collation
(TRL flattens each micro-batch and derives position_ids from ``seq_lengths``). Rank 0 writes
``OUT/trl.json`` with the wall time of every optimizer step and the real tokens each one consumed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist


class CountingCollator:
    """Wraps TRL's collator to count the real (non-pad) tokens each micro-batch carries."""

    def __init__(self, inner) -> None:
        self.inner, self.tokens = inner, []

    def __call__(self, examples):
        self.tokens.append(sum(len(e["input_ids"]) for e in examples))
        return self.inner(examples)


def gloo_partial_state() -> None:
    """accelerate 1.15 + transformers 5 on a CPU host: without an explicit gloo PartialState every rank
    believes world_size == 1 (no data sharding, every rank writes outputs); see the project's CPU
    feasibility notes. Call it before TrainingArguments."""
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    from accelerate.state import PartialState

    PartialState(backend="gloo")
    del os.environ["ACCELERATE_USE_DEEPSPEED"]


def step_clock(stamps: list[float], logs_seen: list[dict]):
    """A TrainerCallback that stamps the start and every step end, and keeps the numeric logs with a loss."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                logs_seen.append({k: v for k, v in logs.items() if isinstance(v, int | float)})

    return Clock()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--ds-config", required=True)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    gloo_partial_state()

    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from data_recipes.tokenizer import load_tokenizer
    from train.model import preset_config

    tokenizer = load_tokenizer()
    train = load_from_disk(args.data)["train"].select_columns(["input_ids", "labels", "seq_lengths"])
    ds_config = json.loads(Path(args.ds_config).read_text())
    sft_args = SFTConfig(
        output_dir=str(Path(args.out) / "trl-run"),
        max_steps=args.steps,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        bf16=False,
        padding_free=True,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
        dataloader_num_workers=0,
        deepspeed=ds_config,
        accelerator_config={"use_configured_state": True},
        disable_tqdm=True,
    )
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_config(
        preset_config("tiny"), dtype=torch.float32, attn_implementation="sdpa"
    )
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train, processing_class=tokenizer)
    collator = CountingCollator(trainer.data_collator)
    trainer.data_collator = collator
    stamps: list[float] = []
    logs_seen: list[dict] = []
    trainer.add_callback(step_clock(stamps, logs_seen))
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    per_step = [sum(collator.tokens[2 * i : 2 * i + 2]) for i in range(args.steps)]
    tokens = torch.tensor(per_step, dtype=torch.float64)
    dist.all_reduce(tokens)
    if dist.get_rank() == 0:
        out = {
            "step_times": [b - a for a, b in itertools.pairwise(stamps)],
            "step_tokens": [int(t) for t in tokens.tolist()],
            "losses": [float(r["loss"]) for r in logs_seen],
            "train_wall_sec": wall,
            "world_size": dist.get_world_size(),
        }
        (Path(args.out) / "trl.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
