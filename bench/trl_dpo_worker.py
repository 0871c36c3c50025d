"""One rank of TRL's DPOTrainer on our preference pairs, for bench/bench_dpo.py (not a supported trainer).

    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 bench/trl_dpo_worker.py --data DIR --out DIR --steps N \\
        --ds-config ds.json --pairs-per-micro 4 --lr 5e-3 --warmup 1

Same model (the ``tiny`` preset, seed 42, fp32, SDPA) with the same LoRA adapter (r 8, alpha 16, every
projection) and the same reference (the adapter disabled), same pairs with the same token ids (taken from
our built dataset: the prompt is the tokens before the first trained token, TRL's completion the rest), same
ZeRO-3 buckets, beta 0.1 sigmoid. TRL pads each micro-batch of pairs (its padding-free mode is disabled in
this release). Rank 0 writes ``OUT/trl_dpo.json`` with every optimizer step's wall time and pair count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from trl_sft_worker import gloo_partial_state, step_clock


def trl_pairs(data: str) -> list[dict]:
    """Our packed pairs as TRL's tokenized preference examples (prompt_ids, chosen_ids, rejected_ids)."""
    from datasets import load_from_disk

    examples = []
    for row in load_from_disk(data)["train"]:
        at = 0
        sides = []
        for n in row["seq_lengths"]:
            sides.append((row["input_ids"][at : at + n], row["labels"][at : at + n]))
            at += n
        for (c_ids, c_lab), (r_ids, _) in zip(sides[0::2], sides[1::2], strict=True):
            first = next(i for i, t in enumerate(c_lab) if t != -100)
            examples.append(
                {"prompt_ids": c_ids[:first], "chosen_ids": c_ids[first:], "rejected_ids": r_ids[first:]}
            )
    return examples


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--ds-config", required=True)
    p.add_argument("--pairs-per-micro", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()

    gloo_partial_state()

    from datasets import Dataset

    from data_recipes.tokenizer import load_tokenizer

    trainer = make_trainer(args, Dataset.from_list(trl_pairs(args.data)), load_tokenizer())
    stamps: list[float] = []
    logs_seen: list[dict] = []
    trainer.add_callback(step_clock(stamps, logs_seen))
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    if dist.get_rank() == 0:
        pairs_per_step = args.pairs_per_micro * 2 * dist.get_world_size()
        out = {
            "step_times": [b - a for a, b in itertools.pairwise(stamps)],
            "pairs_per_step": [pairs_per_step] * args.steps,
            "logs": logs_seen,
            "train_wall_sec": wall,
            "world_size": dist.get_world_size(),
            "num_pairs": len(trainer.train_dataset),
        }
        (Path(args.out) / "trl_dpo.json").write_text(json.dumps(out, indent=2))


def make_trainer(args, train, tokenizer):
    """TRL's DPOTrainer with our settings (see the module docstring), on pre-tokenized pairs."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from train.config import LORA_ALL_LINEAR
    from train.model import preset_config

    class PreTokenizedDPOTrainer(DPOTrainer):
        """Takes the pairs already tokenized (our token ids), instead of re-rendering them from text."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    dpo_args = DPOConfig(
        output_dir=str(Path(args.out) / "trl-dpo-run"), max_steps=args.steps,
        per_device_train_batch_size=args.pairs_per_micro, gradient_accumulation_steps=2, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=args.warmup, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
        max_grad_norm=1.0, gradient_checkpointing=False, bf16=False, beta=0.1, loss_type=["sigmoid"],
        max_length=None, remove_unused_columns=False, logging_steps=1, save_strategy="no", report_to=[],
        seed=42, dataloader_num_workers=0, deepspeed=json.loads(Path(args.ds_config).read_text()),
        accelerator_config={"use_configured_state": True}, disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_config(
        preset_config("tiny"), dtype=torch.float32, attn_implementation="sdpa"
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(LORA_ALL_LINEAR), task_type="CAUSAL_LM"
    )
    return PreTokenizedDPOTrainer(
        model=model, args=dpo_args, train_dataset=train, processing_class=tokenizer, peft_config=lora
    )


if __name__ == "__main__":
    main()
