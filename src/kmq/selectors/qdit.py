"""QDIT (Bukharin & Zhao 2023) and plain facility location: lazy greedy on a k-NN graph.

QDIT maximises, over subsets of ``b`` = budget rows,

    F(S) = (1 − α) · f(S) + α · Σ_{s ∈ S} q(s),    f(S) = Σ_{x ∈ D} max_{s ∈ S} sim(x, s)

which is QDIT's definition and the official code's (``qd_score = (1 − alpha) ·
diversity + alpha · quality``, one greedy step at a time): ``f`` is the facility-location
*sum* over the n pool rows and ``q`` the quality score as given. Each greedy step picks the row
with the largest (1 − α)·Δf + α·q. ``α = 0`` is facility location, ``α = 1`` the top-``b``
rows by quality. The two terms keep their own units, so the balance α strikes depends on the
scale of ``q`` and on n (a first pick covers up to n rows); that is the official behaviour.

Scale-free "share" form: kmq up to 0.1.0 took ``--qdit-alpha`` as a share ``a`` of
(1 − a)·f(S)/n + a·Σ q̃(s)/b with q̃ = (q − min q)/(max q − min q). Both pick the same rows when
α/(1 − α) = a/(1 − a) · n / (b · (max q − min q)); :func:`alpha_from_share` converts.

- ``sim(x, s)`` is the cosine of the L2-normalised embeddings, clipped at 0, if ``s`` is among
  the ``n_neighbors`` candidates most similar to ``x``, and 0 otherwise (see :mod:`kmq.knn`;
  the graph is exact, directed and not symmetrised). With ``n_neighbors >= n`` it is the dense
  clipped-cosine facility location (the official code does not clip negative cosines).
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

from kmq.errors import KmqError, ParameterError
from kmq.knn import knn_graph
from kmq.random import SeedLike
from kmq.selectors.base import Picks, PoolSelector, Quality
from kmq.selectors.submodular import GreedyRun, lazy_greedy


def checked_quality(quality: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    """``quality`` as float64, one finite value per row."""
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,):
        raise KmqError(f"quality must have one entry per row ({n}), got shape {q.shape}")
    if not np.isfinite(q).all():
        bad = int(np.flatnonzero(~np.isfinite(q))[0])
        raise KmqError(f"quality must be finite; row {bad} has {q[bad]}")
    return q


def alpha_from_share(share: float, *, n: int, budget: int, quality_range: float) -> float:
    """QDIT's α that picks the same rows as the scale-free ``share`` a of
    (1 − a)·f(S)/n + a·Σ q̃(s)/b (kmq ≤ 0.1.0's ``--qdit-alpha``), for a pool of ``n`` rows, a
    budget ``b`` and a quality spread ``max q − min q`` (1.0 for a quality already in [0, 1]):
    α/(1 − α) = a/(1 − a) · n / (b · quality_range)."""
    if not 0 <= share <= 1:
        raise KmqError(f"share must be in [0, 1], got {share!r}")
    if n < 1 or budget < 1 or not quality_range > 0:
        raise KmqError(
            f"n and budget must be >= 1 and quality_range > 0, got n={n}, budget={budget}, "
            f"quality_range={quality_range}"
        )
    if share == 1:
        return 1.0
    ratio = share / (1 - share) * n / (budget * quality_range)
    return ratio / (1 + ratio)


class QDITSelector(PoolSelector):
    """Quality-diversity greedy selection (QDIT): maximises the F(S) of :mod:`this module
    <kmq.selectors.qdit>`, (1 − α)·f(S) + α·Σ q, with lazy greedy on an exact
    ``n_neighbors``-NN cosine graph.

    The score of a pick is its marginal gain of F, (1 − α)·Δf + α·q; the reason gives the
    coverage part Δf (how much the pool's summed similarity to its nearest pick rises) and the
    pick's quality.
    """

    name = "qdit"
    score_name = "marginal_gain"

    def __init__(
        self, alpha: float = 0.5, *, n_neighbors: int = 50, show_progress: bool = False
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ParameterError("alpha", f"{{param}} must be a number in [0, 1], got {alpha!r}")
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
            raise ParameterError(
                "n_neighbors", f"{{param}} must be a positive integer, got {n_neighbors!r}"
            )
        self.alpha = float(alpha)
        self.n_neighbors = n_neighbors
        self.show_progress = show_progress

    def checked_quality(self, quality: np.ndarray | None, n: int) -> np.ndarray | None:
        if quality is None and self.alpha > 0:
            raise ParameterError(
                "quality",
                f"{self.name} with alpha={self.alpha} weighs quality: give {{param}} or "
                "{quality_field} (or use alpha=0 for pure facility location)",
                "quality_field",
            )
        return None if quality is None else checked_quality(quality, n)

    def pick(
        self, x: np.ndarray, rows: np.ndarray, budget: int, q: Quality, seed: SeedLike
    ) -> Picks:
        n = len(x)
        graph = knn_graph(x, self.n_neighbors, candidates=rows, show_progress=self.show_progress)
        bonus = np.zeros(n) if q is None else self.alpha * q
        run = lazy_greedy(
            graph.reverse(),
            rows,
            budget,
            coverage_weight=1.0 - self.alpha,
            bonus=bonus,
            show_progress=self.show_progress,
            desc=self.name,
        )
        return Picks(
            rows=run.picks,
            scores=run.gains,
            reasons=self.reasons(run, q),
            notes=[self.summary(run, q, n)],
        )

    def reasons(self, run: GreedyRun, q: np.ndarray | None) -> list[str]:
        quality = (
            [""] * len(run.picks) if q is None else [f", quality {v:.4g}" for v in q[run.picks]]
        )
        return [
            f"greedy step {r + 1}: marginal gain {g:.4g} (coverage +{c:.4g}{qs})"
            for r, (g, c, qs) in enumerate(zip(run.gains, run.coverage_gains, quality, strict=True))
        ]

    def summary(self, run: GreedyRun, q: np.ndarray | None, n: int) -> str:
        objective = (1 - self.alpha) * run.coverage
        quality = ""
        if q is not None:
            total_q = float(q[run.picks].sum())
            objective += self.alpha * total_q
            quality = f", summed quality {total_q:.4g}"
        return (
            f"{self.name}: F(S) = {objective:.4g} with alpha={self.alpha:g} (coverage f(S) = "
            f"{run.coverage:.4g} of {n} rows, mean {run.coverage / n:.4f}, on a "
            f"{self.n_neighbors}-NN graph{quality}); "
            f"{run.evaluations} lazy gain evaluations for {len(run.picks)} picks"
        )


class FacilityLocationSelector(QDITSelector):
    """Facility location: QDIT with ``alpha = 0`` (apricot's ``FacilityLocationSelection`` on a
    clipped-cosine k-NN graph). Quality, if given, is only reported."""

    name = "facility-location"

    def __init__(self, *, n_neighbors: int = 50, show_progress: bool = False) -> None:
        super().__init__(0.0, n_neighbors=n_neighbors, show_progress=show_progress)
