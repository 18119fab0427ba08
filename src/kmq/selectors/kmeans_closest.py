"""kM-Closest: per-cluster quotas, the rows nearest the cluster's centre."""

from __future__ import annotations

import numpy as np
from numpy.random import Generator

from kmq.clustering import normalize
from kmq.selectors.base import ClusterSelector, Picks, Quality


class KMeansClosestSelector(ClusterSelector):
    """The paper's kM-Closest baseline.

    The centre is the normalised mean of the cluster's rows (the k-means centroid); the score
    is the cosine similarity of a pick to it (in [-1, 1], higher = more central). Ties are
    broken by row index, so the method uses no randomness.

    ``centroid_cosine`` (one per pool row) replaces the centre and the cosines: the streaming
    path passes each row's cosine to its k-means centroid, from the assignment pass, and never
    loads the rows' vectors.
    """

    name = "km-closest"
    score_name = "centroid_cosine"

    def __init__(
        self, *, allocation: str = "balanced", centroid_cosine: np.ndarray | None = None
    ) -> None:
        super().__init__(allocation=allocation)
        self.centroid_cosine = centroid_cosine

    @property
    def uses_embeddings(self) -> bool:
        """The rows' vectors are read unless ``centroid_cosine`` replaces them."""
        return self.centroid_cosine is None

    def pick(
        self, cluster: int, rows: np.ndarray, quota: int, x: np.ndarray, q: Quality, rng: Generator
    ) -> Picks:
        if self.centroid_cosine is not None:
            cosine = np.asarray(self.centroid_cosine[rows])
        else:
            unit = normalize(np.asarray(x[rows]))
            centre = normalize(unit.mean(0, keepdims=True))[0]
            cosine = unit @ centre
        order = np.lexsort((rows, -cosine))[:quota]
        reasons = [
            f"cluster {cluster}: {r + 1} of {quota} closest to the centre of {len(rows)} rows"
            for r in range(quota)
        ]
        return Picks(rows=rows[order], scores=cosine[order], reasons=reasons)
