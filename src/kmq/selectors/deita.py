"""Deita (Liu et al. 2023): walk rows by quality, keep those far from every kept row."""

from __future__ import annotations

import numpy as np

from kmq.clustering import normalize
from kmq.dedup import threshold_walk
from kmq.errors import KmqError, ParameterError
from kmq.random import SeedLike
from kmq.selectors.base import Picks, PoolSelector, Quality


class DeitaSelector(PoolSelector):
    """Deita's score-first, diversity-aware selection.

    Rows are ranked by quality (descending, ties by row index) — pass Deita's quality ×
    complexity score, or any other — and walked in that order: a row is kept only if its
    *squared* L2 distance to every kept row (on L2-normalised vectors, so in [0, 4]) is
    ``>= threshold``, until the budget is filled. This is the official code's rule: faiss's
    ``IndexFlatL2`` returns squared distances, and a row is skipped when the nearest kept one
    is ``< threshold``. On unit vectors ‖a − b‖² = 2 − 2 cos, so the default 0.9 keeps a row
    only if its cosine to every kept row is ≤ 0.55. If the ranking runs out first the
    selection falls short of the budget and a note says by how much.

    The score of a pick is its quality; excluded rows are neither walked nor compared against.
    The walk is blocked (see :func:`kmq.dedup.threshold_walk`), O(rows walked × budget × d).
    """

    name = "deita"
    score_name = "quality"

    def __init__(self, threshold: float = 0.9, *, show_progress: bool = False) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 <= threshold <= 4
        ):
            raise ParameterError(
                "threshold",
                "{param} is a squared L2 distance between unit vectors and must be in "
                f"[0, 4], got {threshold!r}",
            )
        self.threshold = float(threshold)
        self.show_progress = show_progress

    def checked_quality(self, quality: np.ndarray | None, n: int) -> np.ndarray:
        if quality is None:
            raise ParameterError(
                "quality",
                "deita ranks rows by quality: give {param} or {quality_field}",
                "quality_field",
            )
        q = np.asarray(quality, dtype=np.float64)
        if q.shape != (n,):
            raise KmqError(f"quality must have one entry per row ({n}), got shape {q.shape}")
        if np.isnan(q).any():
            raise KmqError(f"quality has NaN at row {int(np.flatnonzero(np.isnan(q))[0])}")
        return q

    def pick(
        self, x: np.ndarray, rows: np.ndarray, budget: int, q: Quality, seed: SeedLike
    ) -> Picks:
        assert q is not None  # checked_quality refuses None
        ranking = rows[np.lexsort((rows, -q[rows]))]
        # keep iff squared distance >= t  <=>  2 - 2 cos >= t  <=>  cos <= 1 - t/2
        walk = threshold_walk(
            normalize(x),
            ranking,
            1.0 - self.threshold / 2.0,
            inclusive=False,
            limit=budget,
            show_progress=self.show_progress,
        )
        indices = ranking[walk.kept]
        distance = np.maximum(2.0 - 2.0 * walk.nearest, 0.0)
        return Picks(
            rows=indices,
            scores=q[indices],
            reasons=[
                f"rank {r + 1} by quality {q[i]:.4g}; "
                + (
                    f"nearest kept row at squared distance {d:.4f}"
                    if np.isfinite(d)
                    else "first kept row"
                )
                for r, i, d in zip(walk.kept, indices, distance, strict=True)
            ],
            notes=self.notes(len(indices), budget, walk.examined),
        )

    def notes(self, picked: int, budget: int, walked: int) -> list[str]:
        if picked == budget:
            return [f"deita walked {walked} rows of the quality ranking to keep {picked}"]
        return [
            f"deita picked {picked} of the budget of {budget} rows: every other row is within "
            f"squared L2 distance {self.threshold:g} of a kept row; lower the threshold to fill"
            " the budget"
        ]
