"""Random: a uniform sample of the budget."""

from __future__ import annotations

import numpy as np

from kmq.random import SeedLike, make_rng
from kmq.selectors.base import Picks, PoolSelector, Quality


class RandomSelector(PoolSelector):
    """Uniform sample without replacement (the paper's Random baseline)."""

    name = "random"

    def pick(
        self, x: np.ndarray, rows: np.ndarray, budget: int, q: Quality, seed: SeedLike
    ) -> Picks:
        indices = make_rng(seed).choice(rows, size=budget, replace=False)
        reason = f"uniform draw from the {len(rows)} rows available"
        return Picks(rows=indices, scores=np.full(len(indices), np.nan), reasons=[reason] * budget)
