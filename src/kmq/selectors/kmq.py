"""kMQ: per-cluster quotas, a quality-weighted draw without replacement inside each cluster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.errors import KmqError
from kmq.random import SeedLike
from kmq.selectors.base import ClusterPicks, ClusterPlan, ClusterSelector, weighted_order

WEIGHTINGS = ("auto", "linear", "softmax")


class KMQSelector(ClusterSelector):
    """k-means-quality, the paper's static method.

    Inside a cluster, rows are drawn without replacement with probability ∝ w(q):
    ``linear`` w = q^(1/temperature) (needs q >= 0; temperature 1 is the paper's "∝ quality"),
    ``softmax`` w = exp((q - max q) / temperature) over the cluster (the official code);
    ``auto`` (default) is ``linear`` when every score is >= 0 and ``softmax`` otherwise.
    Without quality scores every row weighs the same and kMQ is kM-Random (a note says so).
    """

    name = "kmq"
    score_name = "quality"

    def __init__(
        self, *, allocation: str = "balanced", weighting: str = "auto", temperature: float = 1.0
    ) -> None:
        super().__init__(allocation=allocation)
        if weighting not in WEIGHTINGS:
            raise KmqError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
        if not temperature > 0:
            raise KmqError(f"temperature must be > 0, got {temperature}")
        self.weighting = weighting
        self.temperature = temperature

    def plan(
        self,
        n: int,
        budget: int,
        *,
        labels: np.ndarray | None = None,
        quality: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        seed: SeedLike = 0,
    ) -> ClusterPlan:
        """Also decide the weighting rule (``rule_``), once, on every score."""
        self.rule_ = self.resolve_weighting(quality)
        return super().plan(
            n,
            budget,
            labels=labels,
            quality=quality,
            weights=weights,
            exclude=exclude,
            seed=seed,
        )

    def resolve_weighting(self, quality: np.ndarray | None) -> str:
        """The rule used for the whole pool: ``auto`` decides once, on every score."""
        if quality is None:
            return "uniform"
        q = np.asarray(quality, dtype=np.float64)
        if not np.all(np.isfinite(q)):
            raise KmqError(f"{int((~np.isfinite(q)).sum())} quality scores are NaN or infinite")
        if self.weighting == "auto":
            return "linear" if q.min() >= 0 else "softmax"
        if self.weighting == "linear" and q.min() < 0:
            raise KmqError(
                f"linear quality weighting needs scores >= 0 (min is {q.min():.4g}); "
                "use --quality-weighting softmax (or auto) for signed scores"
            )
        return self.weighting

    def notes(self, quality: np.ndarray | None) -> list[str]:
        if quality is None:
            return [
                "no quality scores given: kmq drew uniformly inside clusters "
                "(km-random's distribution, not its draws)"
            ]
        return []

    def draw_weights(self, q: np.ndarray) -> np.ndarray:
        if self.rule_ == "softmax":
            return np.exp((q - q.max()) / self.temperature)
        return q ** (1.0 / self.temperature)

    def pick(
        self,
        cluster: int,
        members: np.ndarray,
        quota: int,
        embeddings: np.ndarray,
        quality: np.ndarray | None,
        rng: np.random.Generator,
    ) -> ClusterPicks:
        if quality is None:
            q = np.zeros(len(members))
            w = np.ones(len(members))
        else:
            q = np.asarray(quality[members], dtype=np.float64)
            w = self.draw_weights(q)
        p = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        order = weighted_order(w, rng)[:quota]
        reasons = [
            f"cluster {cluster}: quality-weighted draw {r + 1} of {quota} from {len(members)} rows "
            f"(quality {q[i]:.4g}, p={p[i]:.3g})"
            for r, i in enumerate(order)
        ]
        scores = q[order] if quality is not None else np.full(quota, np.nan)
        return ClusterPicks(rows=members[order], scores=scores, reasons=reasons)
