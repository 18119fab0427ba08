from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmq.allocation import ALLOCATIONS, allocate, balanced, equal, proportional, weighted_quotas
from kmq.errors import KmqError

capacities = st.lists(st.integers(0, 60), min_size=1, max_size=30).filter(lambda c: sum(c) > 0)


@given(capacities, st.data())
def test_exact_budget_and_caps(capacity: list[int], data: st.DataObject) -> None:
    cap = np.array(capacity)
    budget = data.draw(st.integers(1, int(cap.sum())))
    for rule in ("balanced", "proportional"):
        quotas = allocate(rule, budget, cap)
        assert quotas.sum() == budget
        assert np.all(quotas <= cap)
        assert np.all(quotas >= 0)


@given(capacities, st.data())
def test_weighted_quotas_follow_weights(capacity: list[int], data: st.DataObject) -> None:
    cap = np.array(capacity)
    weights = np.array(data.draw(st.lists(st.floats(0, 10), min_size=len(cap), max_size=len(cap))))
    budget = data.draw(st.integers(1, int(cap.sum())))
    quotas = weighted_quotas(budget, cap, weights)
    assert quotas.sum() == budget
    assert np.all(quotas <= cap)
    # zero-weight clusters only get rows once every weighted cluster is full
    weighted = (weights > 0) & (cap > 0)
    if np.any(quotas[~weighted] > 0):
        assert np.array_equal(quotas[weighted], cap[weighted])


def test_proportional_is_the_paper_formula_with_largest_remainder() -> None:
    cap = np.array([100, 3, 50, 7, 0, 40])
    # ideal b * |X_j| / n = 60 * [100, 3, 50, 7, 0, 40] / 200 = [30, .9, 15, 2.1, 0, 12]
    assert proportional(60, cap).tolist() == [30, 1, 15, 2, 0, 12]


def test_balanced_water_fills_into_larger_clusters() -> None:
    cap = np.array([100, 3, 50, 7, 0, 40])
    # small clusters are capped (3 + 7), the level for the rest is 50/3 = 16.67: 16 each,
    # the 2 left over go to the two largest clusters.
    assert balanced(60, cap).tolist() == [17, 3, 17, 7, 0, 16]


def test_equal_reproduces_the_official_code_and_underfills() -> None:
    cap = np.array([100, 3, 50, 7, 0, 40])
    assert equal(60, cap).tolist() == [10, 3, 10, 7, 0, 10]
    assert equal(5, cap).sum() == 0  # k = 6 > b = 5: nothing at all


def test_budget_over_capacity_names_the_numbers() -> None:
    with pytest.raises(KmqError, match="budget=11 exceeds the 10 rows"):
        balanced(11, np.array([5, 5]))


def test_unknown_rule_lists_the_valid_ones() -> None:
    with pytest.raises(KmqError, match="balanced, proportional, equal"):
        allocate("fair", 3, np.array([5, 5]))
    assert set(ALLOCATIONS) == {"balanced", "proportional", "equal"}
