"""Global token normalization, and the LR schedule.

The trainer backpropagates ``ce_sum * W / N`` per micro-batch and lets DeepSpeed average over the W
ranks; emulated here without DeepSpeed on uneven micro-batches, it must equal the single-process
``sum of CE / N`` reference, and must differ from a mean of per-micro-batch means. The real engine is
checked against the same reference in tests/integration (test_first_step_equals_single_process_reference).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM

from train.config import ScheduleConfig
from train.data import MicroBatch
from train.loss import backward_scale, micro_ce_sum, reference_loss
from train.model import preset_config
from train.optim import LRSchedule


def micro_batch(gen: torch.Generator, length: int, trained: int) -> MicroBatch:
    ids = torch.randint(0, 1000, (1, length), generator=gen)
    index = torch.randperm(length - 1, generator=gen)[:trained].sort().values
    return MicroBatch(ids, torch.arange(length).unsqueeze(0), index, ids[0, index + 1], [0], [length])


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_world_over_global_count_equals_the_single_process_reference():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        preset_config(
            "tiny", {"vocab_size": 1000, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
        ),
        dtype=torch.float32,
    )
    gen = torch.Generator().manual_seed(1)
    world, accum = 2, 3
    # very uneven micro-batches: trained counts 3 .. 60
    ranks = [[micro_batch(gen, 80, t) for t in (3, 40, 60)], [micro_batch(gen, 64, t) for t in (10, 5, 50)]]
    flat = [mb for rank in ranks for mb in rank]
    n_global = sum(mb.num_trained for mb in flat)

    reference_loss(model, flat).backward()
    ref = grads(model)

    per_rank = []
    for rank in ranks:  # what each rank accumulates with scale_wrt_gas=False
        model.zero_grad()
        for mb in rank:
            (micro_ce_sum(model, mb) * backward_scale(world, n_global)).backward()
        per_rank.append(grads(model))
    averaged = {n: sum(g[n] for g in per_rank) / world for n in ref}  # ZeRO's reduce-scatter average
    for n in ref:
        torch.testing.assert_close(averaged[n], ref[n], rtol=1e-5, atol=1e-8)

    model.zero_grad()
    (sum(micro_ce_sum(model, mb) / mb.num_trained for mb in flat) / (world * accum)).backward()
    mean_of_means = grads(model)
    assert any(not torch.allclose(mean_of_means[n], ref[n], rtol=1e-2) for n in ref)


def test_a_batch_without_trained_tokens_is_an_error():
    with pytest.raises(ValueError, match="no trained tokens"):
        backward_scale(2, 0)


def test_lr_schedule_warmup_cosine_and_floor():
    s = LRSchedule(ScheduleConfig(steps=10, warmup_steps=2, kind="cosine", min_lr_ratio=0.1))
    values = [s(i) for i in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]  # the first step already trains
    assert all(a >= b for a, b in itertools.pairwise(values[2:]))
    assert values[-1] == pytest.approx(0.1)
    assert LRSchedule(ScheduleConfig(steps=5, kind="constant"))(4) == 1.0
    linear = LRSchedule(ScheduleConfig(steps=5, kind="linear"))
    assert [linear(i) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
