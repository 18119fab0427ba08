"""kM-Random: per-cluster quotas, a uniform draw inside each cluster."""

from __future__ import annotations

import numpy as np

from kmq.selectors.base import ClusterSelector, Picks


class KMeansRandomSelector(ClusterSelector):
    """The paper's kM-Random baseline."""

    name = "km-random"
    score_name = "none"

    def pick(
        self,
        cluster: int,
        members: np.ndarray,
        quota: int,
        embeddings: np.ndarray,
        quality: np.ndarray | None,
        rng: np.random.Generator,
    ) -> Picks:
        rows = rng.choice(members, size=quota, replace=False)
        reasons = [
            f"cluster {cluster}: uniform draw {r + 1} of {quota} from {len(members)} rows"
            for r in range(quota)
        ]
        return Picks(rows=rows, scores=np.full(quota, np.nan), reasons=reasons)
