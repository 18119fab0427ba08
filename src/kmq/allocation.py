"""Per-cluster quotas: how many rows each cluster contributes to a budget.

Every rule but ``equal`` meets the budget exactly whenever the clusters hold enough rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kmq.errors import KmqError

ALLOCATIONS = ("balanced", "proportional", "equal")


def weighted_quotas(budget: int, capacity: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Integer quotas ∝ ``weights``, each capped at ``capacity``, summing exactly to ``budget``.

    Water-filling: a cluster whose ideal share exceeds its capacity gets its capacity and the
    excess is re-shared among the others by weight. The fractional parts are rounded by largest
    remainder; ties go to the cluster with more capacity, then the lower index. Clusters with
    zero weight get rows only when the weighted ones cannot absorb the budget.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if capacity.shape != weights.shape:
        raise KmqError(f"capacity and weights differ in shape: {capacity.shape} vs {weights.shape}")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise KmqError("cluster weights must be finite and >= 0")
    total = int(capacity.sum())
    if budget > total:
        raise KmqError(f"budget={budget} exceeds the {total} rows left in the pool")
    quotas = np.zeros_like(capacity)
    positive = (weights > 0) & (capacity > 0)
    if budget > int(capacity[positive].sum()):
        quotas[positive] = capacity[positive]
        rest = (weights == 0) & (capacity > 0)
        return quotas + weighted_quotas(budget - int(quotas.sum()), capacity * rest, rest * 1.0)
    ideal = np.zeros_like(weights)
    active = positive.copy()
    remaining = float(budget)
    while True:
        ideal[active] = remaining * weights[active] / weights[active].sum()
        over = active & (ideal >= capacity)
        if not over.any():
            break
        ideal[over] = capacity[over]
        remaining -= float(capacity[over].sum())
        active &= ~over
    quotas = np.floor(ideal + 1e-9).astype(np.int64)
    short = budget - int(quotas.sum())
    if short > 0:
        frac = np.where(active & (quotas < capacity), ideal - quotas, -1.0)
        order = np.lexsort((np.arange(len(frac)), -capacity, -np.round(frac, 9)))
        quotas[order[:short]] += 1
    return quotas


def proportional(budget: int, capacity: np.ndarray) -> np.ndarray:
    """b_j ∝ |X_j| (the paper's formula), largest-remainder rounding."""
    return weighted_quotas(budget, capacity, np.asarray(capacity, dtype=np.float64))


def balanced(budget: int, capacity: np.ndarray) -> np.ndarray:
    """The same quota for every cluster, capped at its size; the rest goes to larger clusters."""
    return weighted_quotas(budget, capacity, (np.asarray(capacity) > 0).astype(np.float64))


def equal(budget: int, capacity: np.ndarray) -> np.ndarray:
    """The official code exactly: int(b / k) per cluster (capped at its size), no redistribution.

    Under-fills whenever a cluster is smaller than b / k or k does not divide b, and selects
    nothing at all when k > b. For reproducing the official code only.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    return np.minimum(capacity, budget // max(len(capacity), 1))


RULES: dict[str, Callable[[int, np.ndarray], np.ndarray]] = {
    "balanced": balanced,
    "proportional": proportional,
    "equal": equal,
}


def allocate(rule: str, budget: int, capacity: np.ndarray) -> np.ndarray:
    """Quotas under the named rule (one of ``ALLOCATIONS``)."""
    try:
        fn = RULES[rule]
    except KeyError:
        raise KmqError(
            f"allocation must be one of {', '.join(ALLOCATIONS)}; got {rule!r}"
        ) from None
    return fn(budget, capacity)
