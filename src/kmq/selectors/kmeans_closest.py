"""kM-Closest: per-cluster quotas, the rows nearest the cluster's centre."""

from __future__ import annotations

import numpy as np

from kmq.clustering import normalize
from kmq.selectors.base import ClusterPicks, ClusterSelector


class KMeansClosestSelector(ClusterSelector):
    """The paper's kM-Closest baseline.

    The centre is the normalised mean of the cluster's rows (the k-means centroid); the score
    is the cosine similarity of a pick to it (in [-1, 1], higher = more central). Ties are
    broken by row index, so the method uses no randomness.
    """

    name = "km-closest"
    score_name = "centroid_cosine"

    def pick(
        self,
        cluster: int,
        members: np.ndarray,
        quota: int,
        embeddings: np.ndarray,
        quality: np.ndarray | None,
        rng: np.random.Generator,
    ) -> ClusterPicks:
        x = normalize(np.asarray(embeddings[members]))
        centre = normalize(x.mean(0, keepdims=True))[0]
        cosine = x @ centre
        order = np.lexsort((members, -cosine))[:quota]
        reasons = [
            f"cluster {cluster}: {r + 1} of {quota} closest to the centre of {len(members)} rows"
            for r in range(quota)
        ]
        return ClusterPicks(rows=members[order], scores=cosine[order], reasons=reasons)
