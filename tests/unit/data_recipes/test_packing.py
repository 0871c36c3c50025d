"""Global FFD: equal to one-by-one first-fit decreasing, every item once, no row over capacity,
deterministic, and >= 99.9 % efficient on a Hermes-like length mix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_recipes.packing import ffd_pack, next_fit_pack, shuffle_rows


def reference_ffd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Textbook FFD, one item at a time, quadratic: the oracle."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for b, f in enumerate(free):
            if f >= lengths[i]:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def check_plan(plan, lengths, capacity):
    rows = plan.rows()
    flat = np.concatenate(rows) if rows else np.zeros(0, int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every item exactly once
    for r, row in enumerate(rows):
        total = int(np.asarray(lengths)[row].sum())
        assert 0 < total <= capacity and total == plan.row_tokens[r]


lengths_st = st.integers(1, 64).flatmap(
    lambda cap: st.tuples(st.just(cap), st.lists(st.integers(1, cap), max_size=300))
)


@settings(max_examples=200, deadline=None)
@given(lengths_st)
def test_ffd_equals_reference(case):
    capacity, lengths = case
    plan = ffd_pack(lengths, capacity)
    check_plan(plan, lengths, capacity)
    assert [row.tolist() for row in plan.rows()] == reference_ffd(lengths, capacity)


@settings(max_examples=50, deadline=None)
@given(lengths_st, st.integers(0, 2**32 - 1))
def test_shuffle_keeps_rows_and_is_seeded(case, seed):
    capacity, lengths = case
    plan = ffd_pack(lengths, capacity)
    a, b = shuffle_rows(plan, seed), shuffle_rows(plan, seed)
    check_plan(a, lengths, capacity)
    assert [r.tolist() for r in a.rows()] == [r.tolist() for r in b.rows()]
    assert sorted(map(tuple, (r.tolist() for r in a.rows()))) == sorted(
        map(tuple, (r.tolist() for r in plan.rows()))
    )


@settings(max_examples=50, deadline=None)
@given(lengths_st)
def test_next_fit_baseline_is_valid(case):
    capacity, lengths = case
    check_plan(next_fit_pack(lengths, capacity), lengths, capacity)


def test_rejects_items_that_do_not_fit():
    with pytest.raises(ValueError, match="lengths must be in"):
        ffd_pack([5, 17], 16)
    with pytest.raises(ValueError, match="lengths must be in"):
        ffd_pack([0], 16)
    assert ffd_pack([], 16).num_rows == 0


def test_hermes_like_mix_is_over_999_per_mille():
    rng = np.random.default_rng(0)
    reasoning = rng.lognormal(np.log(4000), 0.8, 14_000)
    plain = rng.lognormal(np.log(800), 1.0, 6_000)
    lengths = np.clip(np.concatenate([reasoning, plain]).astype(int), 20, 16384)
    plan = ffd_pack(lengths, 16384)
    check_plan(plan, lengths, 16384)
    assert plan.efficiency >= 0.999
    assert plan.efficiency > next_fit_pack(lengths, 16384).efficiency + 0.05
    again = ffd_pack(lengths, 16384)
    assert np.array_equal(plan.items, again.items) and np.array_equal(plan.row_offsets, again.row_offsets)
