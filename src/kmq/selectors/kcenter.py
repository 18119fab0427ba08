"""k-Center: greedy farthest-point selection with k = budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from kmq.clustering import normalize
from kmq.random import SeedLike, make_rng
from kmq.selectors.base import SelectionResult, available_mask, check_budget


class KCenterSelector:
    """Greedy k-center (Gonzalez): start at a seeded random row, then repeatedly add the row
    farthest (L2 on normalised vectors) from everything picked so far.

    The score of a pick is its distance to the nearest earlier pick (in [0, 2]; the first
    pick's is NaN). Excluded rows are neither candidates nor centres.
    """

    name = "k-center"
    score_name = "coverage_distance"

    def __init__(self, *, show_progress: bool = False) -> None:
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
        mask = available_mask(len(embeddings), exclude)
        candidates = np.flatnonzero(mask)
        check_budget(budget, len(candidates))
        x = normalize(np.asarray(embeddings)[candidates])
        first = int(make_rng(seed).integers(len(candidates)))
        nearest = np.full(len(x), np.inf, dtype=np.float32)
        chosen = [first]
        scores = [np.nan]
        with tqdm(total=int(budget), desc="k-center", disable=not self.show_progress) as bar:
            bar.update(1)
            for _ in range(int(budget) - 1):
                d2 = np.maximum(2.0 - 2.0 * (x @ x[chosen[-1]]), 0.0)
                np.minimum(nearest, d2, out=nearest)
                nearest[chosen[-1]] = -1.0
                nxt = int(np.argmax(nearest))
                chosen.append(nxt)
                scores.append(float(np.sqrt(nearest[nxt])))
                bar.update(1)
        indices = candidates[np.asarray(chosen, dtype=np.int64)]
        reasons = ["seeded random start"] + [
            f"farthest row: distance {s:.4f} to the nearest of {r + 1} earlier picks"
            for r, s in enumerate(scores[1:])
        ]
        return SelectionResult(
            method=self.name,
            budget=int(budget),
            indices=indices,
            scores=np.asarray(scores, dtype=np.float64),
            score_name=self.score_name,
            reasons=reasons,
            labels=labels,
        )
