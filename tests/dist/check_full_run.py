"""One 2-rank ZeRO-3 launch that trains the tiny model and checks the trainer from the inside.

    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 tests/dist/check_full_run.py CONFIG --result OUT.json [k=v ...]

It drives :class:`train.recipe.SFTRecipe` (the same object ``hermes-sft train`` runs) and checks, in
one launch (each launch costs ~15 s of imports):

1. parameters are really partitioned (every rank holds ~1/world of every large tensor, nothing else);
2. the first optimizer step's gradients equal a single-process reference computed by hand: sum of CE
   over every trained token of the global batch / their count (and differ from a mean of
   per-micro-batch means); the engine's grad norm equals the reference's;
3. after training, the last checkpoint consolidates (DeepSpeed's zero_to_fp32) to the live weights;
4. a NaN loss on one rank stops every rank with the step and that rank's row ids, before the update
   (the live weights still equal the last checkpoint).

Rank 0 writes the measurements to ``--result``; pytest asserts on them (tests/integration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from train.config import load_train_config
from train.data import collate, rank_slices
from train.launch import apply_rank_env
from train.loss import NonFiniteLossError, micro_ce_sum
from train.model import gather_to_rank0


def partition_report(engine, world: int) -> dict:
    total = local = unpartitioned = 0
    for _, p in engine.module.named_parameters():
        total += p.ds_numel
        local += p.ds_tensor.numel()
        if p.numel() != 0 and p.ds_numel > 0:  # persistent (small) params stay gathered
            unpartitioned += p.ds_numel
    return {"total": total, "local": local, "unpartitioned_live": unpartitioned, "world": world}


def reference_grads(recipe, full_state: dict | None) -> dict | None:
    """Rank 0: a plain (non-DeepSpeed) copy of the model on the whole global batch of the next step."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    rows = recipe.stream.rows(recipe.progress.rows_consumed, recipe.layout.global_batch_size)
    vocab = recipe.hf_config.vocab_size
    micro = [
        collate(recipe.train_ds, r, vocab)
        for rank in range(recipe.world)
        for r in rank_slices(rows, recipe.layout, rank)
    ]
    if recipe.rank != 0:
        return None
    unset_hf_deepspeed_config()
    try:
        model = AutoModelForCausalLM.from_config(
            recipe.hf_config, dtype=torch.float32, attn_implementation="sdpa"
        )
    finally:
        set_hf_deepspeed_config(recipe._hf_ds)
    model.load_state_dict(full_state, strict=True)
    n_total = sum(mb.num_trained for mb in micro)
    loss = sum(micro_ce_sum(model, mb) for mb in micro) / n_total
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    means = sum(micro_ce_sum(model, mb) / mb.num_trained for mb in micro) / len(micro)  # mean of means
    means.backward()
    mom = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    return {"loss": float(loss.detach()), "grads": grads, "mean_of_means": mom, "norm": norm}


def check_first_step(recipe) -> dict:
    from deepspeed.utils import safe_get_full_grad

    full_state = dict(gather_to_rank0(recipe.engine.module.named_parameters(), recipe.rank))
    ref = reference_grads(recipe, full_state if recipe.rank == 0 else None)
    stats = recipe.accumulate(recipe.next_micro_batches())
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    params = dict(recipe.engine.module.named_parameters())
    live = {n: safe_get_full_grad(params[n]) for n in names}  # collective: every rank calls it
    stats = recipe.apply_update(stats)
    recipe._advance(stats, 1.0)
    if recipe.rank != 0:
        return {}
    out = {"loss": stats.loss, "ref_loss": ref["loss"], "grad_norm": stats.grad_norm, "ref_norm": ref["norm"]}
    out["max_rel_err"] = max(
        float((live[n] - ref["grads"][n]).abs().max() / ref["grads"][n].abs().max()) for n in names
    )
    out["mean_of_means_rel_diff"] = max(
        float((ref["mean_of_means"][n] - ref["grads"][n]).abs().max() / ref["grads"][n].abs().max())
        for n in names
    )
    return out


def consolidation_report(recipe) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    live = dict(gather_to_rank0(recipe.engine.module.named_parameters(), recipe.rank))
    if recipe.rank != 0:
        return {}
    saved = get_fp32_state_dict_from_zero_checkpoint(str(recipe.last_checkpoint), tag="ds")
    return {
        "checkpoint": str(recipe.last_checkpoint),
        "missing": sorted(set(live) - set(saved)),
        "unexpected": sorted(set(saved) - set(live)),
        "max_abs_diff": max(
            float((saved[n].float() - live[n].float()).abs().max()) for n in live if n in saved
        ),
        "num_tensors": len(saved),
    }


def nonfinite_check(recipe) -> dict:
    """Poison rank 1's loss for one more step: every rank must raise, naming rank 1's rows."""
    import train.recipe as recipe_mod

    rows = recipe.stream.rows(recipe.progress.rows_consumed, recipe.layout.global_batch_size)
    expected = sorted(r for mb in rank_slices(rows, recipe.layout, 1) for r in mb)
    original = recipe_mod.micro_objective

    def poisoned(model, mb, device, *args):
        objective, ce = original(model, mb, device, *args)
        nan = float("nan") if recipe.rank == 1 else 1.0
        return objective * nan, ce * nan

    recipe_mod.micro_objective = poisoned
    try:
        recipe.accumulate(recipe.next_micro_batches())
    except NonFiniteLossError as err:
        return {"raised": True, "message": str(err), "expected_rows": expected, "step": recipe.progress.step + 1}
    finally:
        recipe_mod.micro_objective = original
    return {"raised": False}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--result", required=True)
    args = p.parse_args()
    apply_rank_env()
    from train.recipe import SFTRecipe

    recipe = SFTRecipe(load_train_config(args.config, args.overrides), args.config)
    recipe.setup()
    result = {"partition": partition_report(recipe.engine, recipe.world)}
    result["first_step"] = check_first_step(recipe)
    recipe.train()
    result["consolidation"] = consolidation_report(recipe)
    result["status"] = recipe.status
    result["nonfinite"] = nonfinite_check(recipe)
    result["after_nonfinite"] = consolidation_report(recipe)
    gathered = [None] * recipe.world
    dist.all_gather_object(gathered, result["partition"])
    result["partitions"] = gathered
    recipe.cleanup()
    if recipe.rank == 0:
        Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
