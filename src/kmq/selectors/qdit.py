"""QDIT (Bukharin & Zhao 2023) and plain facility location: lazy greedy on a k-NN graph.

QDIT maximises

    F(S) = (1 − α) · f(S) / n + α · Σ_{s ∈ S} q̃(s) / b,    f(S) = Σ_{x ∈ D} max_{s ∈ S} sim(x, s)

over subsets of ``b`` = budget rows. Both terms are means in [0, 1]: f(S)/n is how well the
average pool row is covered by its most similar selected row, Σ q̃ / b the average normalised
quality of the selection, so ``α`` trades like for like (``α = 0``: facility location only;
``α = 1``: the top-``b`` rows by quality). ``b`` is fixed during a run, so this is the paper's
(1 − α)·f + α·Σq with the two terms put on one scale.

- ``sim(x, s)`` is the cosine of the L2-normalised embeddings, clipped at 0, if ``s`` is among
  the ``n_neighbors`` candidates most similar to ``x``, and 0 otherwise (see :mod:`kmq.knn`;
  the graph is exact, directed and not symmetrised). With ``n_neighbors >= n`` it is the dense
  clipped-cosine facility location.
- ``q̃ = (q − min q) / (max q − min q)`` over the whole pool (excluded rows included, so a row's
  q̃ does not change between rounds); a constant quality gives q̃ = 1 everywhere.
- Excluded rows are not candidates but still count as points to cover: the selection covers the
  whole pool, including rows picked in earlier rounds.

The official implementation recomputes the whole objective for every candidate at every step
(O(n²·b)); here the graph makes a gain O(rows the candidate covers) and lazy greedy
(:mod:`kmq.selectors.submodular`) evaluates few candidates per step, with the same picks as the
plain greedy algorithm (ties go to the lowest row index, so the seed is not used).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.errors import KmqError
from kmq.knn import knn_graph
from kmq.random import SeedLike
from kmq.selectors.base import SelectionResult, available_mask, check_budget
from kmq.selectors.submodular import GreedyRun, lazy_greedy


def normalized_quality(quality: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    """``q̃ = (q − min) / (max − min)`` in [0, 1] over all ``n`` rows (all ones if constant)."""
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,):
        raise KmqError(f"quality must have one entry per row ({n}), got shape {q.shape}")
    if not np.isfinite(q).all():
        bad = int(np.flatnonzero(~np.isfinite(q))[0])
        raise KmqError(f"quality must be finite; row {bad} has {q[bad]}")
    lo, hi = q.min(), q.max()
    if hi == lo:
        return np.ones(n, dtype=np.float64)
    return (q - lo) / (hi - lo)


class QDITSelector:
    """Quality-diversity greedy selection (QDIT): maximises the F(S) of :mod:`this module
    <kmq.selectors.qdit>` with lazy greedy on an exact ``n_neighbors``-NN cosine graph.

    The score of a pick is its marginal gain of F (in F's units: ≤ (1 − α)·max coverage
    gain + α/b); the reason gives the coverage part as the rise of mean coverage f/n and the
    pick's normalised quality q̃.
    """

    name = "qdit"
    score_name = "marginal_gain"

    def __init__(
        self, alpha: float = 0.5, *, n_neighbors: int = 50, show_progress: bool = False
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise KmqError(f"alpha must be a number in [0, 1], got {alpha!r}")
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
            raise KmqError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
        self.alpha = float(alpha)
        self.n_neighbors = n_neighbors
        self.show_progress = show_progress

    def select(
        self,
        embeddings: np.ndarray,
        budget: int,
        *,
        labels: np.ndarray | None = None,
        quality: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        seed: SeedLike = 0,
    ) -> SelectionResult:
        n = len(embeddings)
        if quality is None and self.alpha > 0:
            raise KmqError(
                f"{self.name} with alpha={self.alpha} weighs quality: pass --quality or "
                "--quality-field (or use alpha=0 for pure facility location)"
            )
        q = None if quality is None else normalized_quality(quality, n)
        candidates = np.flatnonzero(available_mask(n, exclude))
        check_budget(budget, len(candidates))
        graph = knn_graph(
            embeddings, self.n_neighbors, candidates=candidates, show_progress=self.show_progress
        )
        bonus = np.zeros(n) if q is None else (self.alpha / int(budget)) * q
        run = lazy_greedy(
            graph.reverse(),
            candidates,
            int(budget),
            coverage_weight=(1.0 - self.alpha) / n,
            bonus=bonus,
            show_progress=self.show_progress,
            desc=self.name,
        )
        return SelectionResult(
            method=self.name,
            budget=int(budget),
            indices=run.picks,
            scores=run.gains,
            score_name=self.score_name,
            reasons=self.reasons(run, q, n),
            labels=labels,
            notes=[self.summary(run, q, n)],
        )

    def reasons(self, run: GreedyRun, q: np.ndarray | None, n: int) -> list[str]:
        quality = (
            [""] * len(run.picks) if q is None else [f", quality {v:.3g}" for v in q[run.picks]]
        )
        return [
            f"greedy step {r + 1}: marginal gain {g:.4g} (coverage +{c / n:.4g}{qs})"
            for r, (g, c, qs) in enumerate(zip(run.gains, run.coverage_gains, quality, strict=True))
        ]

    def summary(self, run: GreedyRun, q: np.ndarray | None, n: int) -> str:
        coverage = run.coverage / n
        objective = (1 - self.alpha) * coverage
        quality = ""
        if q is not None:
            mean_q = float(q[run.picks].mean())
            objective += self.alpha * mean_q
            quality = f", mean normalised quality {mean_q:.4f}"
        return (
            f"{self.name}: F(S) = {objective:.4f} with alpha={self.alpha:g} (mean coverage "
            f"f(S)/n = {coverage:.4f} on a {self.n_neighbors}-NN graph{quality}); "
            f"{run.evaluations} lazy gain evaluations for {len(run.picks)} picks"
        )


class FacilityLocationSelector(QDITSelector):
    """Facility location: QDIT with ``alpha = 0`` (apricot's ``FacilityLocationSelection`` on a
    clipped-cosine k-NN graph). Quality, if given, is only reported."""

    name = "facility-location"

    def __init__(self, *, n_neighbors: int = 50, show_progress: bool = False) -> None:
        super().__init__(0.0, n_neighbors=n_neighbors, show_progress=show_progress)
