"""kMQ: per-cluster quotas, a quality-weighted draw without replacement inside each cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Unpack

import numpy as np
from numpy.random import Generator

from kmq.errors import KmqError, ParameterError
from kmq.random import stream
from kmq.selectors.base import (
    ClusterPlan,
    ClusterSelector,
    Picks,
    Quality,
    SelectArgs,
    weighted_order,
)

WEIGHTINGS = ("auto", "linear", "softmax", "standardized")
DEFAULT_CANDIDATES = 8
# A cluster's candidates come from stream(seed, cluster, CANDIDATE_STREAM); its picks from
# stream(seed, cluster), as without candidates.
CANDIDATE_STREAM = 1


def candidate_multiple(value: int | str | None) -> int | None:
    """``quality_candidates`` as M (candidates per quota row), or None for "score every row"
    (given as None, 0 or ``"all"``)."""
    if value is None or value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ParameterError(
            "quality_candidates",
            "{param} must be a positive integer M (score M × quota rows per cluster), or 0 / "
            f"'all' to score every row; got {value!r}",
        )
    return int(value) or None


def draw_candidates(plan: ClusterPlan, multiple: int) -> ClusterPlan:
    """``plan`` with each cluster's members cut to its candidates: ``multiple`` × its quota rows
    drawn uniformly without replacement from the cluster's own candidate stream (all of its
    rows when they are no more than that; none for a cluster without a quota).

    Quotas are final before candidates are drawn (a cluster that received another's shortfall
    draws candidates for its grown quota), so every cluster has at least its quota.
    """
    parts: list[np.ndarray] = []
    sizes = np.zeros(len(plan.quotas), dtype=np.int64)
    for j in plan.clusters:
        members = plan.members(j)
        want = multiple * int(plan.quotas[j])
        if want < len(members):
            rng = stream(plan.seed, j, CANDIDATE_STREAM)
            members = np.sort(rng.choice(members, size=want, replace=False))
        parts.append(members)
        sizes[j] = len(members)
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return replace(plan, rows=rows, offsets=np.concatenate([[0], np.cumsum(sizes)]))


class KMQSelector(ClusterSelector):
    """k-means-quality, the paper's static method.

    Inside a cluster, rows are drawn without replacement with probability ∝ w(q):
    ``linear`` w = q^(1/temperature) (needs q >= 0; temperature 1 is the paper's "∝ quality"),
    ``softmax`` w = exp((q - max q) / temperature) over the cluster (the official code);
    ``standardized`` w = exp((q - max q) / (temperature · σ)), σ the standard deviation of every
    score read (the pool's, or its candidates'): the softmax in units of σ, so a row one σ
    better is e^(1/temperature) times as likely whatever the score's scale (a raw softmax of
    a score spread over tens of nats is an argmax inside each cluster; σ = 0 draws uniformly);
    ``auto`` (default) is ``linear`` when every score is >= 0 and ``softmax`` otherwise.
    Without quality scores every row weighs the same and kMQ is kM-Random (a note says so).

    ``candidates`` = M (None: every row) draws only among candidates: per cluster, M × quota
    rows drawn uniformly from the cluster's own stream (:func:`draw_candidates`); only their
    quality is read (the others' may be NaN: :meth:`candidate_rows` says which rows to score)
    and ``auto`` decides on their scores. A cluster of at most M × quota rows draws from all of
    them, exactly as without candidates.
    """

    name = "kmq"
    score_name = "quality"

    def __init__(
        self,
        *,
        allocation: str = "balanced",
        weighting: str = "auto",
        temperature: float = 1.0,
        candidates: int | str | None = None,
    ) -> None:
        super().__init__(allocation=allocation)
        if weighting not in WEIGHTINGS:
            raise ParameterError(
                "weighting", f"{{param}} must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}"
            )
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ParameterError("temperature", f"{{param}} must be > 0, got {temperature!r}")
        self.weighting = weighting
        self.temperature = temperature
        self.candidates = candidate_multiple(candidates)

    def plan(self, n: int, budget: int, **inputs: Unpack[SelectArgs]) -> ClusterPlan:
        """Also cut the members to the candidates (with ``candidates`` and scores) and decide
        the weighting rule (``rule_``), once, on every score read (``pool_sizes_``: the rows
        each cluster could pick from before the cut)."""
        plan = super().plan(n, budget, **inputs)
        quality = inputs.get("quality")
        self.pool_sizes_ = np.diff(plan.offsets)
        if quality is None or self.candidates is None:
            self.decide_weighting(quality)
            return plan
        plan = draw_candidates(plan, self.candidates)
        self.decide_weighting(np.asarray(quality)[plan.rows])
        return plan

    def decide_weighting(self, quality: np.ndarray | None) -> None:
        """Set ``rule_`` and ``scale_`` (σ of ``quality`` for ``standardized``, else 1) once."""
        self.rule_ = self.resolve_weighting(quality)
        self.scale_ = 1.0
        if self.rule_ == "standardized" and quality is not None:
            self.scale_ = float(np.std(np.asarray(quality, dtype=np.float64)))

    def candidate_rows(self, n: int, budget: int, **inputs: Unpack[SelectArgs]) -> np.ndarray:
        """The rows whose quality :meth:`select` with the same arguments reads (ascending):
        every row without ``candidates``, else each cluster's candidates (``quality`` is not
        needed)."""
        if self.candidates is None:
            return np.arange(n, dtype=np.int64)
        plan = super().plan(n, budget, **inputs)
        return np.sort(draw_candidates(plan, self.candidates).rows)

    def resolve_weighting(self, quality: np.ndarray | None) -> str:
        """The rule used for the whole pool: ``auto`` decides once, on every score."""
        if quality is None:
            return "uniform"
        q = np.asarray(quality, dtype=np.float64)
        if not np.all(np.isfinite(q)):
            read = "rows that may be drawn" if self.candidates is not None else "rows"
            raise KmqError(
                f"{int((~np.isfinite(q)).sum())} of the {len(q)} {read} have a NaN or infinite "
                "quality score"
            )
        if self.weighting == "auto":
            return "linear" if q.min() >= 0 else "softmax"
        if self.weighting == "linear" and q.min() < 0:
            raise ParameterError(
                "quality_weighting",
                f"linear quality weighting needs scores >= 0 (min is {q.min():.4g}); "
                "use {param} softmax (or auto) for signed scores",
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
        if self.rule_ in ("softmax", "standardized"):  # scale_ is 1 for softmax
            if self.scale_ == 0:
                return np.ones(len(q))
            return np.exp((q - q.max()) / (self.temperature * self.scale_))
        return q ** (1.0 / self.temperature)

    def pick(
        self, cluster: int, rows: np.ndarray, quota: int, x: np.ndarray, q: Quality, rng: Generator
    ) -> Picks:
        if q is None:
            own = np.zeros(len(rows))
            w = np.ones(len(rows))
        else:
            own = np.asarray(q[rows], dtype=np.float64)
            w = self.draw_weights(own)
        p = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        order = weighted_order(w, rng)[:quota]
        among = f"{len(rows)} rows"
        size = int(self.pool_sizes_[cluster])
        if len(rows) < size:
            among = f"{len(rows)} candidates of {size} rows"
        reasons = [
            f"cluster {cluster}: quality-weighted draw {r + 1} of {quota} from {among} "
            f"(quality {own[i]:.4g}, p={p[i]:.3g})"
            for r, i in enumerate(order)
        ]
        scores = own[order] if q is not None else np.full(quota, np.nan)
        return Picks(rows=rows[order], scores=scores, reasons=reasons)
