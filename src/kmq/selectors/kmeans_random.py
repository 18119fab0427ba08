"""kM-Random: per-cluster quotas, a uniform draw inside each cluster."""

from __future__ import annotations

import numpy as np
from numpy.random import Generator

from kmq.selectors.base import ClusterSelector, Picks, Quality


class KMeansRandomSelector(ClusterSelector):
    """The paper's kM-Random baseline."""

    name = "km-random"
    score_name = "none"

    def pick(
        self, cluster: int, rows: np.ndarray, quota: int, x: np.ndarray, q: Quality, rng: Generator
    ) -> Picks:
        picked = rng.choice(rows, size=quota, replace=False)
        reasons = [
            f"cluster {cluster}: uniform draw {r + 1} of {quota} from {len(rows)} rows"
            for r in range(quota)
        ]
        return Picks(rows=picked, scores=np.full(quota, np.nan), reasons=reasons)
