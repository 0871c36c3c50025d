"""One 2-rank ZeRO-3 DPO launch that checks the pair-level global normalization from the inside.

    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 tests/dist/check_dpo_run.py CONFIG --result OUT.json [k=v ...]

It drives :class:`train.recipe.SFTRecipe` with ``objective: dpo`` (the object ``hermes-sft train`` runs)
and compares the engine's gradients of the first optimizer step with a single-process reference computed
by hand on a plain copy of the model: the mean of the DPO loss over every pair of the global batch
(+ ``rpo_alpha`` × NLL over every chosen trained token), with the reference log-probs of the same
weights; it also reports how far a mean of per-micro-batch means would be. Then it trains to the end.
Rank 0 writes the measurements to ``--result``; tests/integration/test_train_dpo.py asserts on them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from train.config import load_train_config
from train.data import collate, rank_slices
from train.dpo import pair_counts, pair_terms
from train.launch import apply_rank_env
from train.model import gather_to_rank0
from train.reference import sequence_logps

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
]


def plain_model(recipe, full_state: dict):
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        model = AutoModelForCausalLM.from_config(recipe.hf_config, dtype=torch.float32, attn_implementation="sdpa")
    finally:
        set_hf_deepspeed_config(recipe._hf_ds)
    model.load_state_dict(full_state, strict=True)
    return model


def micro_loss(model, mb, cfg, pairs: float, chosen_tokens: float) -> torch.Tensor:
    with torch.no_grad():
        ref, _ = sequence_logps(model, mb)
    policy, counts = sequence_logps(model, mb)
    terms = pair_terms(policy, ref, counts, cfg)
    return terms.losses.sum() / pairs + cfg.rpo_alpha * (-policy[0::2].sum()) / chosen_tokens


def reference_grads(recipe, full_state: dict | None) -> dict | None:
    rows = recipe.stream.rows(recipe.progress.rows_consumed, recipe.layout.global_batch_size)
    vocab = recipe.hf_config.vocab_size
    micro = [collate(recipe.train_ds, r, vocab) for k in range(recipe.world) for r in rank_slices(rows, recipe.layout, k)]
    if recipe.rank != 0:
        return None
    model, cfg = plain_model(recipe, full_state), recipe.cfg.dpo
    counts = [pair_counts(mb) for mb in micro]
    pairs, chosen = sum(p for p, _ in counts), sum(c for _, c in counts)
    loss = sum(micro_loss(model, mb, cfg, pairs, chosen) for mb in micro)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    means = sum(micro_loss(model, mb, cfg, p, c) for mb, (p, c) in zip(micro, counts, strict=True)) / len(micro)
    means.backward()
    mom = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    return {"loss": float(loss), "grads": grads, "mean_of_means": mom, "norm": norm, "pairs_per_micro": counts}


def check_first_step(recipe) -> dict:
    from deepspeed.utils import safe_get_full_grad

    full_state = dict(gather_to_rank0(recipe.engine.module.named_parameters(), recipe.rank))
    ref = reference_grads(recipe, full_state if recipe.rank == 0 else None)
    stats = recipe.accumulate(recipe.next_micro_batches())
    params = dict(recipe.engine.module.named_parameters())
    live = {n: safe_get_full_grad(params[n]) for n in NAMES}  # collective: every rank calls it
    stats = recipe.apply_update(stats)
    recipe._advance(stats, 1.0)
    if recipe.rank != 0:
        return {}
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    return {
        "loss": stats.loss, "ref_loss": ref["loss"], "grad_norm": stats.grad_norm, "ref_norm": ref["norm"],
        "max_rel_err": max(rel(live[n], ref["grads"][n]) for n in NAMES),
        "mean_of_means_rel_diff": max(rel(ref["mean_of_means"][n], ref["grads"][n]) for n in NAMES),
        "pairs_per_micro": ref["pairs_per_micro"], "extra": stats.extra,
    }  # fmt: skip


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
    result = {"reference_kind": recipe.objective.reference_kind, "first_step": check_first_step(recipe)}
    recipe.train()
    result["status"] = recipe.status
    recipe.cleanup()
    if recipe.rank == 0:
        Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
