"""``objective: dpo``: preference optimization on packed chosen/rejected pairs, normalized per global batch.

Data. A preference dataset (``kind: preference``, :mod:`data_recipes.preference`) packs whole pairs:
in every row, sequences ``2k`` and ``2k + 1`` are the chosen and rejected side of one pair, each with
positions restarting at 0, so a micro-batch is the same flattened ``[1, T]`` sequence as in SFT and one
forward scores both sides of every pair in it (no padding, no second forward for the rejected side).

Log-probs. A side's log-prob is the sum of ``log p(token)`` over its trained tokens (labels ≠ −100), the
same tokens SFT trains; only those positions reach the LM head (``logits_to_keep``).

Loss (per pair, ``Δ = (π_c − ref_c) − (π_r − ref_r)``; rewards ``β (π − ref)``):

* ``sigmoid``: ``−log σ(β Δ)`` (DPO);
* ``robust``: ``(−(1−ε) log σ(β Δ) + ε log σ(−β Δ)) / (1 − 2ε)`` (rDPO, ε = ``label_smoothing``);
* ``ipo``: ``(Δ_c / n_c − Δ_r / n_r − 1 / (2β))²`` with ``n`` the side's trained tokens (TRL's
  per-token normalization of IPO);
* ``rpo_alpha`` > 0 adds ``α × NLL`` of the chosen trained tokens (RPO).

These are TRL's formulas (``DPOTrainer._compute_loss``); tests/unit/train/test_dpo.py runs TRL's own code
on our log-probs and compares.

Normalization. The loss of an optimizer step is the mean over the **pairs of the whole global batch**
(every micro-batch, every rank), and the RPO term is normalized by the global batch's chosen trained
tokens: both counts are all-reduced before the first backward, and each micro-batch backpropagates
``(sum of its pair losses) × W / P (+ α × chosen NLL sum × W / T_c)`` with ``scale_wrt_gas=False``; the
engine's mean over W ranks then gives exactly the global mean (the same argument as train/loss.py).
A mean of per-micro-batch means would over-weight pairs in micro-batches holding few pairs.

Reference log-probs come from :mod:`train.reference` (adapter disabled, or precomputed once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from train.config import DPOConfig, TrainConfig
from train.data import MicroBatch, collate, eval_slices
from train.distributed import all_reduce_sum
from train.progress import StepStats
from train.reference import AdapterReference, PrecomputedReference, sequence_logps


@dataclass
class PairTerms:
    losses: torch.Tensor
    """[pairs] the preference loss of each pair (with grad)."""
    chosen_rewards: torch.Tensor
    """[pairs] β (π_c − ref_c), detached."""
    rejected_rewards: torch.Tensor
    """[pairs] β (π_r − ref_r), detached."""


def pair_terms(
    policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor, cfg: DPOConfig
) -> PairTerms:
    """Per-pair losses and rewards from per-sequence log-probs laid out ``[c0, r0, c1, r1, …]``."""
    reference = reference.to(policy.device, policy.dtype)
    chosen = policy[0::2] - reference[0::2]
    rejected = policy[1::2] - reference[1::2]
    delta = cfg.beta * (chosen - rejected)
    if cfg.loss_type == "sigmoid":
        losses = -F.logsigmoid(delta)
    elif cfg.loss_type == "robust":
        eps = cfg.label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(delta) + eps * F.logsigmoid(-delta)) / (1 - 2 * eps)
    elif cfg.loss_type == "ipo":
        n = counts.to(policy.device, policy.dtype).clamp(min=1.0)
        losses = (chosen / n[0::2] - rejected / n[1::2] - 1 / (2 * cfg.beta)) ** 2
    else:
        raise ValueError(f"unknown dpo.loss_type {cfg.loss_type!r}")
    return PairTerms(losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach())


def pair_counts(mb: MicroBatch) -> tuple[int, int]:
    """(pairs, chosen trained tokens) of a micro-batch; ValueError if its rows do not hold whole pairs."""
    if len(mb.seq_lengths) % 2:
        raise ValueError(
            f"dataset rows {mb.row_ids}: an odd number of sequences; objective: dpo needs a preference dataset "
            "(`kind: preference` in the data config, see configs/data/sample-preference.yaml)"
        )
    counts = sequence_token_counts(mb)
    if mb.weight and bool((counts == 0).any()):
        raise ValueError(
            f"dataset rows {mb.row_ids}: a pair side without trained tokens; rebuild the dataset"
        )
    return (len(mb.seq_lengths) // 2 if mb.weight else 0), int(counts[0::2].sum()) if mb.weight else 0


def sequence_token_counts(mb: MicroBatch) -> torch.Tensor:
    """Trained tokens per sequence of the micro-batch."""
    seq_of_pos = torch.repeat_interleave(
        torch.arange(len(mb.seq_lengths)), torch.tensor(mb.seq_lengths, dtype=torch.long)
    )
    return torch.bincount(seq_of_pos[mb.target_index], minlength=len(mb.seq_lengths))


def check_objective(manifest: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """The manifest, once its dataset kind fits ``cfg.objective``: an SFT dataset under ``objective: dpo``
    and a preference dataset under ``objective: sft`` are refused (before anything is built)."""
    kind, objective, path = manifest.get("kind", "sft"), cfg.objective, cfg.data.path
    if objective == "dpo" and kind != "preference":
        raise ValueError(
            f"data.path={path} is an SFT dataset (kind: {kind}) but objective: dpo needs chosen/rejected pairs; "
            "build a preference dataset (`kind: preference`, e.g. configs/data/sample-preference.yaml) or set "
            "objective: sft"
        )
    if objective != "dpo" and kind == "preference":
        raise ValueError(
            f"data.path={path} holds preference pairs (kind: preference) but objective is {objective}; "
            "set objective: dpo (see configs/tiny-cpu-dpo.yaml) or build an SFT dataset"
        )
    return manifest


STAT_KEYS = (
    "loss_sum",
    "chosen_rewards",
    "rejected_rewards",
    "correct",
    "chosen_logps",
    "rejected_logps",
    "nll",
)


class DPOObjective:
    """The DPO step and eval, driven by the recipe (``host``: engine, device, world, layout, datasets,
    ``stop``, ``_raise_nonfinite``). Chosen once at setup; SFT never reaches this code. Built after the
    engine and *before* a checkpoint is loaded: a precomputed reference is computed from the initial
    weights (train/reference.py)."""

    def __init__(self, host) -> None:
        cfg = host.cfg
        self.host, self.cfg = host, cfg.dpo
        reference = cfg.dpo.reference
        if reference == "auto":
            reference = "adapter" if cfg.lora.enabled else "precomputed"
        self.reference_kind = reference
        if reference == "adapter":
            self.reference = AdapterReference(host.engine, host.peft_model, host.device)
        else:
            self.reference = PrecomputedReference.load_or_compute(host)

    def _reduce(self, values: list[float]) -> list[float]:
        return all_reduce_sum(self.host.device, values)

    def _terms(self, mb: MicroBatch, split: str) -> tuple[PairTerms, torch.Tensor]:
        host = self.host
        ref = self.reference.logps(mb, split)
        policy, counts = sequence_logps(host.engine, mb, host.device)
        return pair_terms(policy, ref, counts, self.cfg), policy

    def accumulate(self, micro_batches: list[MicroBatch]) -> StepStats:
        """Forward + backward of every micro-batch with the global pair normalization (module docstring)."""
        host, alpha = self.host, self.cfg.rpo_alpha
        local = [pair_counts(mb) for mb in micro_batches]
        pairs, chosen_tokens = self._reduce([sum(p for p, _ in local), sum(c for _, c in local)])
        if pairs <= 0:
            raise ValueError("the global batch holds no preference pairs; check the dataset")
        sums, bad_rows = dict.fromkeys(STAT_KEYS, 0.0), []
        for i, mb in enumerate(micro_batches):
            terms, policy = self._terms(mb, "train")
            nll = -policy[0::2].sum()
            total = terms.losses.sum() * (host.world / pairs)
            if alpha:
                total = total + alpha * nll * (host.world / chosen_tokens)
            if not torch.isfinite(total):
                bad_rows += mb.row_ids
            host.engine.backward(total, scale_wrt_gas=False)
            self._add(sums, terms, policy, nll)
            if i < len(micro_batches) - 1:
                host.engine.step()  # DeepSpeed counts micro-steps; only the boundary step updates
        tokens = sum(mb.num_tokens for mb in micro_batches)
        sq = sum(n * n for mb in micro_batches for n in mb.seq_lengths)
        trained = sum(mb.num_trained for mb in micro_batches)
        stats = [0.0 if bad_rows else sums[k] for k in STAT_KEYS]
        totals = self._reduce([*stats, tokens, sq, trained, len(bad_rows), host.stop.local()])
        if totals[-2]:
            host._raise_nonfinite(bad_rows)
        record = self._record(dict(zip(STAT_KEYS, totals, strict=False)), pairs, chosen_tokens)
        return StepStats(
            loss=record.pop("loss"),
            grad_norm=None,
            lr=host.engine.get_lr()[0],
            tokens=int(totals[-5]),
            trained_tokens=int(totals[-3]),
            sum_sq_lengths=int(totals[-4]),
            stop=bool(totals[-1]),
            extra=record,
        )

    @staticmethod
    def _add(sums: dict[str, float], terms: PairTerms, policy: torch.Tensor, nll: torch.Tensor) -> None:
        sums["loss_sum"] += float(terms.losses.detach().sum())
        sums["chosen_rewards"] += float(terms.chosen_rewards.sum())
        sums["rejected_rewards"] += float(terms.rejected_rewards.sum())
        sums["correct"] += float((terms.chosen_rewards > terms.rejected_rewards).sum())
        sums["chosen_logps"] += float(policy[0::2].detach().sum())
        sums["rejected_logps"] += float(policy[1::2].detach().sum())
        sums["nll"] += float(nll.detach())

    def _record(self, s: dict[str, float], pairs: float, chosen_tokens: float, prefix: str = "") -> dict:
        nll = s["nll"] / max(1.0, chosen_tokens)
        record = {
            "loss": s["loss_sum"] / pairs + self.cfg.rpo_alpha * nll,
            "rewards_chosen": s["chosen_rewards"] / pairs,
            "rewards_rejected": s["rejected_rewards"] / pairs,
            "reward_accuracy": s["correct"] / pairs,
            "reward_margin": (s["chosen_rewards"] - s["rejected_rewards"]) / pairs,
            "logps_chosen": s["chosen_logps"] / pairs,
            "logps_rejected": s["rejected_logps"] / pairs,
            "pairs": int(pairs),
        }
        if self.cfg.rpo_alpha:
            record["dpo_loss"], record["nll_chosen"] = s["loss_sum"] / pairs, nll
        return {f"{prefix}{k}": v for k, v in record.items()}

    def evaluate(self) -> float | None:
        """Eval on the eval split's pairs: logged (metrics on rank 0, a line); sets and returns the host's
        ``eval_loss`` (the mean DPO loss over the eval pairs)."""
        record = self.eval_record()
        if record is None:
            return None
        host = self.host
        host.eval_loss = record["eval_loss"]
        if host.metrics is not None:
            host.metrics.log({"step": host.progress.step, **record})
        host._info(
            f"step {host.progress.step}: eval loss {record['eval_loss']:.4f}, reward accuracy "
            f"{record['eval_reward_accuracy']:.3f}, margin {record['eval_reward_margin']:.4f} over "
            f"{record['eval_pairs']:,} pairs"
        )
        return record["eval_loss"]

    @torch.no_grad()
    def eval_record(self) -> dict[str, Any] | None:
        """DPO loss, rewards and reward accuracy on the eval split's pairs (same collectives on every rank)."""
        host = self.host
        if host.eval_ds is None:
            return None
        host.engine.eval()
        sums, pairs, chosen_tokens = dict.fromkeys(STAT_KEYS, 0.0), 0, 0
        layout, vocab = host.layout, host.hf_config.vocab_size
        for rows, weight in eval_slices(len(host.eval_ds), layout, host.rank, host.cfg.data.eval_max_rows):
            mb = collate(host.eval_ds, rows, vocab, weight=weight)
            terms, policy = self._terms(mb, "eval")
            if weight:
                n_pairs, n_chosen = pair_counts(mb)
                pairs, chosen_tokens = pairs + n_pairs, chosen_tokens + n_chosen
                self._add(sums, terms, policy, -policy[0::2].sum())
        host.engine.train()
        totals = self._reduce([*(sums[k] for k in STAT_KEYS), pairs, chosen_tokens])
        all_pairs, all_chosen = totals[-2], totals[-1]
        if all_pairs <= 0:
            return None
        return self._record(dict(zip(STAT_KEYS, totals, strict=False)), all_pairs, all_chosen, prefix="eval_")


def first_step_loss(cfg: DPOConfig) -> float:
    """The loss when the policy equals the reference (zero rewards): ln 2 for sigmoid and robust."""
    if cfg.loss_type == "ipo":
        return (1 / (2 * cfg.beta)) ** 2
    return math.log(2.0)
