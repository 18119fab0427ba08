"""Lazy greedy maximisation of a sparse facility-location objective plus a modular bonus.

    F(S) = w · Σ_x max(0, max_{s ∈ S} sim(x, s)) + Σ_{s ∈ S} bonus(s)

with ``sim`` read from a k-nearest-neighbour graph (:mod:`kmq.knn`). The marginal gain of a
candidate ``c`` is ``w · Σ_{x: c ∈ N(x)} max(0, sim(x, c) − cur(x)) + bonus(c)``, where
``cur(x)`` is how well ``x`` is covered so far; it only shrinks as ``S`` grows (submodularity),
so a gain computed at an earlier step is an upper bound now. Lazy greedy (Minoux 1978) keeps
those stale bounds in a max-heap and re-evaluates the top until the top is fresh: it picks
exactly what the plain greedy algorithm picks, ties going to the lowest row index.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from kmq.knn import ReverseGraph

# Initial bounds come from a different summation order than the re-evaluations; inflating
# them by far more than float64 rounding keeps them upper bounds (costs nothing but one
# evaluation per candidate that reaches the top of the heap).
BOUND_SLACK = 1e-9


@dataclass
class GreedyRun:
    """Picks in order, the gain of F and the raw coverage gain Σ Δcur at each pick."""

    picks: np.ndarray  # (b,) int64 row indices
    gains: np.ndarray  # (b,) float64 marginal gain of F
    coverage_gains: np.ndarray  # (b,) float64 Σ_x of the rise of cur(x)
    coverage: float  # f(S) = Σ_x cur(x) after the last pick
    evaluations: int  # marginal gains computed after the initial bounds


class CoverageState:
    """``cur(x)``: the similarity of every point to its best-covering selected row."""

    def __init__(self, reverse: ReverseGraph, n_points: int) -> None:
        self.reverse = reverse
        self.cur = np.zeros(n_points, dtype=np.float64)

    def gain(self, c: int) -> float:
        """``Σ_{x: c ∈ N(x)} max(0, sim(x, c) − cur(x))``."""
        points, sims = self.reverse.covered_by(c)
        return float(np.maximum(sims - self.cur[points], 0.0).sum())

    def add(self, c: int) -> None:
        points, sims = self.reverse.covered_by(c)
        self.cur[points] = np.maximum(self.cur[points], sims)

    def initial_gains(self, candidates: np.ndarray) -> np.ndarray:
        """Every candidate's gain on the empty set (``Σ sim``), vectorised."""
        csum = np.concatenate([[0.0], np.cumsum(self.reverse.similarities)])
        ip = self.reverse.indptr
        return csum[ip[candidates + 1]] - csum[ip[candidates]]


def lazy_greedy(
    reverse: ReverseGraph,
    candidates: np.ndarray,
    budget: int,
    *,
    coverage_weight: float,
    bonus: np.ndarray,
    show_progress: bool = False,
    desc: str = "lazy greedy",
) -> GreedyRun:
    """Greedy maximisation of F over ``candidates`` (row indices, ascending) for ``budget`` picks.

    ``bonus`` has one entry per pool row; ``coverage_weight`` is ``w``. Every pool row counts
    as a point to cover; only ``candidates`` can be picked.
    """
    state = CoverageState(reverse, len(reverse.indptr) - 1)
    use_coverage = coverage_weight != 0.0
    bound = bonus[candidates].astype(np.float64)
    if use_coverage:
        bound = bound + coverage_weight * state.initial_gains(candidates)
    bound = bound + BOUND_SLACK * (np.abs(bound) + 1.0)
    # entries: (-bound, row, step the bound was computed at (-1: initial), coverage gain)
    heap = [(-float(g), int(c), -1, 0.0) for g, c in zip(bound, candidates, strict=True)]
    heapq.heapify(heap)
    picks, gains, coverage_gains = [], [], []
    evaluations = 0
    for step in tqdm(range(budget), desc=desc, disable=not show_progress):
        while heap[0][2] != step:
            c = heap[0][1]
            cov = state.gain(c) if use_coverage else 0.0
            heapq.heapreplace(heap, (-(coverage_weight * cov + float(bonus[c])), c, step, cov))
            evaluations += 1
        neg_gain, c, _, cov = heapq.heappop(heap)
        coverage_gains.append(cov if use_coverage else state.gain(c))
        state.add(c)
        picks.append(c)
        gains.append(-neg_gain)
    return GreedyRun(
        picks=np.asarray(picks, dtype=np.int64),
        gains=np.asarray(gains, dtype=np.float64),
        coverage_gains=np.asarray(coverage_gains, dtype=np.float64),
        coverage=float(state.cur.sum()),
        evaluations=evaluations,
    )
