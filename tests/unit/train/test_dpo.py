"""DPO maths on a real (tiny, random) model: packed per-side log-probs equal each side scored alone, the
first step is ln 2 with zero rewards, and loss + rewards equal TRL's own DPOTrainer loss code run on the
same log-probs, for every loss type we support (and the RPO term)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from train.config import DPOConfig, TrainConfig, load_train_config
from train.data import collate
from train.dpo import check_objective, first_step_loss, pair_counts, pair_terms
from train.reference import sequence_logps

VOCAB = 96
REPO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "tiny-cpu-dpo.yaml"
# (prompt length, chosen completion length, rejected completion length) of each pair
PAIRS = [(7, 5, 9), (4, 12, 3), (11, 2, 6)]


def tiny_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def make_pairs(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Sides as (ids, labels): BOS + shared prompt (untrained) + completion (trained)."""
    g = torch.Generator().manual_seed(seed)
    sides = []
    for p, c, r in PAIRS:
        prompt = [1, *torch.randint(3, VOCAB, (p,), generator=g).tolist()]
        for n in (c, r):
            completion = torch.randint(3, VOCAB, (n,), generator=g).tolist()
            sides.append((prompt + completion, [-100] * len(prompt) + completion))
    return sides


def packed_micro_batch(sides) -> object:
    """All pairs in one packed row, as the builder writes it (positions restart per side)."""
    ids = [t for s, _ in sides for t in s]
    labels = [t for _, lab in sides for t in lab]
    pos = [i for s, _ in sides for i in range(len(s))]
    lengths = [len(s) for s, _ in sides]
    ds = Dataset.from_dict(
        {"input_ids": [ids], "labels": [labels], "position_ids": [pos], "seq_lengths": [lengths]}
    )
    return collate(ds, [0], VOCAB)


def alone_token_logps(model, ids: list[int], labels: list[int]) -> torch.Tensor:
    """Per-token log-probs of one side run alone: entry j scores token j + 1 (0 where untrained)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return logp * torch.tensor([lab != -100 for lab in labels[1:]], dtype=torch.float32)


@pytest.fixture(scope="module")
def scored():
    sides = make_pairs()
    policy, reference = tiny_model(0), tiny_model(1)
    mb = packed_micro_batch(sides)
    with torch.no_grad():
        pol, counts = sequence_logps(policy, mb)
        ref, _ = sequence_logps(reference, mb)
    return SimpleNamespace(sides=sides, mb=mb, policy=policy, pol=pol, ref=ref, counts=counts)


def test_packed_side_logps_equal_each_side_alone(scored):
    alone = torch.stack([alone_token_logps(scored.policy, i, lab).sum() for i, lab in scored.sides])
    torch.testing.assert_close(scored.pol, alone, rtol=1e-5, atol=1e-4)
    expected_counts = [n for _, c, r in PAIRS for n in (c, r)]
    assert scored.counts.tolist() == expected_counts
    assert pair_counts(scored.mb) == (3, sum(c for _, c, _ in PAIRS))


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust"])
def test_first_step_is_ln2_with_zero_rewards(scored, loss_type):
    cfg = DPOConfig(beta=0.1, loss_type=loss_type, label_smoothing=0.2 if loss_type == "robust" else 0.0)
    terms = pair_terms(scored.pol, scored.pol.clone(), scored.counts, cfg)  # policy == reference
    assert abs(float(terms.losses.mean()) - math.log(2)) < 1e-6
    assert first_step_loss(cfg) == pytest.approx(0.6931, abs=1e-4)
    assert terms.chosen_rewards.abs().max() == 0 and terms.rejected_rewards.abs().max() == 0


def trl_loss(scored, cfg: DPOConfig, loss_types: list[str], weights: list[float]) -> tuple[float, dict]:
    """TRL's DPOTrainer._compute_loss on the same log-probs (policy per token, reference precomputed)."""
    from trl import DPOTrainer

    sides = scored.sides
    width = max(len(i) for i, _ in sides)
    order = list(range(0, len(sides), 2)) + list(range(1, len(sides), 2))  # TRL: [chosen…, rejected…]
    input_ids = torch.zeros(len(sides), width, dtype=torch.long)
    completion = torch.zeros(len(sides), width, dtype=torch.long)
    per_token = torch.zeros(len(sides), width - 1)
    for row, k in enumerate(order):
        ids, labels = sides[k]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        completion[row, : len(ids)] = torch.tensor([lab != -100 for lab in labels])
        per_token[row, : len(ids) - 1] = alone_token_logps(scored.policy, ids, labels)
    ones = torch.ones_like(per_token)
    fake_model = lambda **kw: SimpleNamespace(  # noqa: E731 (the fused LM head's outputs TRL reads)
        log_probs=per_token, entropy=ones, mean_logits=ones, is_top1=ones.bool()
    )
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=loss_types, loss_weights=weights, beta=cfg.beta,
        label_smoothing=cfg.label_smoothing, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
    )  # fmt: skip
    inputs = {
        "input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "completion_mask": completion,
        "ref_chosen_logps": scored.ref[0::2], "ref_rejected_logps": scored.ref[1::2],
    }  # fmt: skip
    loss = DPOTrainer._compute_loss(trainer, fake_model, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize(
    ("loss_type", "smoothing", "rpo"),
    [
        ("sigmoid", 0.0, 0.0),
        ("ipo", 0.0, 0.0),
        ("robust", 0.15, 0.0),
        ("sigmoid", 0.0, 0.5),
        ("ipo", 0.0, 1.0),
    ],
)
def test_loss_and_rewards_equal_trl(scored, loss_type, smoothing, rpo):
    cfg = DPOConfig(beta=0.3, loss_type=loss_type, label_smoothing=smoothing, rpo_alpha=rpo)
    terms = pair_terms(scored.pol, scored.ref, scored.counts, cfg)
    chosen_tokens = scored.counts[0::2].sum()
    ours = terms.losses.mean() + rpo * (-scored.pol[0::2].sum() / chosen_tokens)
    types, weights = ([loss_type, "sft"], [1.0, rpo]) if rpo else ([loss_type], [1.0])
    theirs, metrics = trl_loss(scored, cfg, types, weights)
    assert float(ours) == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert float(terms.chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-5, abs=1e-6)
    assert float(terms.rejected_rewards.mean()) == pytest.approx(
        metrics["rewards/rejected"], rel=1e-5, abs=1e-6
    )
    margin = float((terms.chosen_rewards - terms.rejected_rewards).mean())
    assert margin == pytest.approx(metrics["rewards/margins"], rel=1e-5, abs=1e-6)
    accuracy = float((terms.chosen_rewards > terms.rejected_rewards).float().mean())
    assert accuracy == metrics["rewards/accuracies"]
    assert float(scored.pol[0::2].mean()) == pytest.approx(metrics["logps/chosen"], rel=1e-5)


def test_objective_and_dataset_kind_must_agree():
    from train.config import load_train_config

    dpo = load_train_config(REPO_CONFIG, [])
    sft = load_train_config(REPO_CONFIG, ["objective=sft"])
    with pytest.raises(ValueError, match="is an SFT dataset"):
        check_objective({"kind": "sft"}, dpo)
    with pytest.raises(ValueError, match="is an SFT dataset"):
        check_objective({}, dpo)  # a dataset built before pairs existed
    with pytest.raises(ValueError, match="set objective: dpo"):
        check_objective({"kind": "preference"}, sft)
    assert check_objective({"kind": "preference"}, dpo) == {"kind": "preference"}
    assert check_objective({"kind": "sft"}, sft) == {"kind": "sft"}


@pytest.mark.parametrize(
    ("dpo", "match"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"label_smoothing": 0.1}, "loss_type=robust"),
        ({"loss_type": "robust", "label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ({"rpo_alpha": -1}, "rpo_alpha"),
    ],
)
def test_bad_dpo_settings_are_refused(dpo, match):
    with pytest.raises(ValueError, match=match):
        DPOConfig(**dpo)


def test_adapter_reference_needs_lora():
    with pytest.raises(ValueError, match=r"lora\.enabled=true"):
        load_train_config(REPO_CONFIG, ["lora.enabled=false", "dpo.reference=adapter"])
    cfg = load_train_config(REPO_CONFIG, [])
    assert isinstance(cfg, TrainConfig) and cfg.objective == "dpo" and cfg.lora.enabled


@pytest.mark.parametrize(
    "override, match",
    [
        ("distributed.sequence_parallel=2", "sequence_parallel: 1"),
        ("loss.tile_tokens=2048", "tile_tokens: 0"),
    ],
)
def test_dpo_refuses_settings_it_would_ignore(override, match):
    """SP and the tiled head apply to the SFT loss only: DPO refuses them instead of silently ignoring them."""
    with pytest.raises(ValueError, match=match):
        load_train_config(REPO_CONFIG, [override])


def test_odd_sequence_rows_are_refused(scored):
    mb = packed_micro_batch(scored.sides[:3])
    with pytest.raises(ValueError, match="odd number of sequences"):
        pair_counts(mb)
