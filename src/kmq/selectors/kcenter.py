"""k-Center: greedy farthest-point selection with k = budget."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from kmq.clustering import normalize
from kmq.random import SeedLike, make_rng
from kmq.selectors.base import Picks, PoolSelector, Quality


class KCenterSelector(PoolSelector):
    """Greedy k-center (Gonzalez): start at a seeded random row, then repeatedly add the row
    farthest (L2 on normalised vectors) from everything picked so far.

    The score of a pick is its distance to the nearest earlier pick (in [0, 2]; the first
    pick's is NaN). Excluded rows are neither candidates nor centres.
    """

    name = "k-center"
    score_name = "coverage_distance"

    def __init__(self, *, show_progress: bool = False) -> None:
        self.show_progress = show_progress

    def pick(
        self, x: np.ndarray, rows: np.ndarray, budget: int, q: Quality, seed: SeedLike
    ) -> Picks:
        unit = normalize(np.asarray(x)[rows])
        first = int(make_rng(seed).integers(len(rows)))
        nearest = np.full(len(unit), np.inf, dtype=np.float32)
        chosen = [first]
        scores = [np.nan]
        with tqdm(total=budget, desc="k-center", disable=not self.show_progress) as bar:
            bar.update(1)
            for _ in range(budget - 1):
                d2 = np.maximum(2.0 - 2.0 * (unit @ unit[chosen[-1]]), 0.0)
                np.minimum(nearest, d2, out=nearest)
                nearest[chosen[-1]] = -1.0
                nxt = int(np.argmax(nearest))
                chosen.append(nxt)
                scores.append(float(np.sqrt(nearest[nxt])))
                bar.update(1)
        indices = rows[np.asarray(chosen, dtype=np.int64)]
        reasons = ["seeded random start"] + [
            f"farthest row: distance {s:.4f} to the nearest of {r + 1} earlier picks"
            for r, s in enumerate(scores[1:])
        ]
        return Picks(rows=indices, scores=np.asarray(scores, dtype=np.float64), reasons=reasons)
