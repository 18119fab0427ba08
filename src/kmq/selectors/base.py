"""What every selector returns, and the shared machinery of the per-cluster selectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kmq.allocation import ALLOCATIONS, allocate, weighted_quotas
from kmq.errors import KmqError
from kmq.random import SeedLike, seed_sequence, stream
from kmq.registry import choose


@dataclass
class SelectionResult:
    """A selection: pool row indices in pick order, and why each was picked.

    ``scores[i]`` is the score pick ``i`` had under ``score_name`` (NaN where the method has
    none); ``labels`` are the pool's cluster labels, ``quotas``/``counts`` the per-cluster
    quota and number picked (None for methods without clusters).
    """

    method: str
    budget: int
    indices: np.ndarray
    scores: np.ndarray
    score_name: str
    reasons: list[str]
    labels: np.ndarray | None = None
    quotas: np.ndarray | None = None
    counts: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    silhouette: dict[int, float] | None = None  # silhouette per k tried, when k was chosen

    def __post_init__(self) -> None:
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.counts is None:
                k = int(self.labels.max()) + 1 if len(self.labels) else 0
                self.counts = np.bincount(self.labels[self.indices], minlength=k)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shortfall(self) -> int:
        """Rows the budget asked for that were not selected (non-zero only for ``equal``)."""
        return self.budget - len(self.indices)


class Selector(Protocol):
    """Every method, the paper's and the baselines'."""

    name: str

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
    ) -> SelectionResult: ...


def available_mask(n: int, exclude: np.ndarray | Sequence[int] | None) -> np.ndarray:
    """Boolean mask of rows that may be picked; ``exclude`` is a mask or row indices."""
    mask = np.ones(n, dtype=bool)
    if exclude is None:
        return mask
    ex = np.asarray(exclude)
    if ex.dtype == bool:
        if ex.shape != (n,):
            raise KmqError(f"an exclude mask must have one entry per row ({n}), got {ex.shape}")
        return ~ex
    if ex.size and (ex.min() < 0 or ex.max() >= n):
        raise KmqError(f"exclude holds row indices outside 0..{n - 1}")
    mask[ex.astype(np.int64)] = False
    return mask


def check_budget(budget: int, n_available: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise KmqError(f"budget must be a positive integer, got {budget!r}")
    if budget > n_available:
        raise KmqError(f"budget={budget} exceeds the {n_available} rows left in the pool")


@dataclass
class ClusterPicks:
    """What one cluster contributed: member rows in pick order, their scores and reasons."""

    rows: np.ndarray
    scores: np.ndarray
    reasons: list[str]


@dataclass
class ClusterPlan:
    """What a per-cluster selection fixes before any cluster picks (cheap: O(n) integers).

    Cluster ``j`` picks ``quotas[j]`` of :meth:`members` ``(j)``, drawing from the stream
    ``stream(seed, j)``; ``clusters`` are those with a quota.
    """

    budget: int
    labels: np.ndarray  # (n,) int64
    quotas: np.ndarray  # (k,)
    seed: np.random.SeedSequence
    rows: np.ndarray  # the rows that may be picked, grouped by cluster, ascending in each
    offsets: np.ndarray  # (k + 1,): cluster j's rows are rows[offsets[j]:offsets[j + 1]]

    @property
    def clusters(self) -> list[int]:
        return [int(j) for j in np.flatnonzero(self.quotas)]

    def members(self, cluster: int) -> np.ndarray:
        """The rows cluster ``cluster`` may pick from, in ascending order."""
        return self.rows[self.offsets[cluster] : self.offsets[cluster + 1]]


class ClusterSelector:
    """Selectors that split the budget into per-cluster quotas, then pick inside each cluster.

    Quotas follow ``allocation`` (see :mod:`kmq.allocation`), or are ∝ ``weights`` when
    per-cluster weights are given (the iterative loop). Each cluster draws from its own random
    stream derived from the seed and the cluster id, so a cluster's picks do not depend on the
    other clusters. Picks are ordered round-robin across clusters (every cluster's first pick,
    then every second pick, ...), so any prefix of the selection is spread over the clusters.
    """

    name = "cluster"
    score_name = "score"

    def __init__(self, *, allocation: str = "balanced") -> None:
        choose("allocation", allocation, ALLOCATIONS)
        self.allocation = allocation

    def pick(
        self,
        cluster: int,
        members: np.ndarray,
        quota: int,
        embeddings: np.ndarray,
        quality: np.ndarray | None,
        rng: np.random.Generator,
    ) -> ClusterPicks:
        raise NotImplementedError

    def notes(self, quality: np.ndarray | None) -> list[str]:
        return []

    @property
    def uses_embeddings(self) -> bool:
        """Whether :meth:`pick` reads the rows' vectors (engines ship them only then)."""
        return False

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
        plan = self.plan(
            len(embeddings),
            budget,
            labels=labels,
            quality=quality,
            weights=weights,
            exclude=exclude,
            seed=seed,
        )
        picks = {
            j: self.pick_cluster(
                j, plan.members(j), int(plan.quotas[j]), embeddings, quality, plan.seed
            )
            for j in plan.clusters
        }
        return self.assemble(plan, picks, quality)

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
        """Check the inputs for ``n`` rows and fix the quotas, the members and the seed."""
        if labels is None:
            raise KmqError(f"the {self.name} selector needs cluster labels (labels=...)")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise KmqError(f"labels must have one entry per row ({n}), got shape {labels.shape}")
        if quality is not None and len(quality) != n:
            raise KmqError(f"quality must have one entry per row ({n}), got {len(quality)}")
        mask = available_mask(n, exclude)
        check_budget(budget, int(mask.sum()))
        k = int(labels.max()) + 1 if n else 0
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if len(weights) != k:
                raise KmqError(f"weights must have one entry per cluster ({k}), got {len(weights)}")
        capacity = np.bincount(labels[mask], minlength=k)
        if weights is None:
            quotas = allocate(self.allocation, int(budget), capacity)
        else:
            quotas = weighted_quotas(int(budget), capacity, weights)
        available = np.flatnonzero(mask)
        return ClusterPlan(
            budget=int(budget),
            labels=labels,
            quotas=quotas,
            seed=seed_sequence(seed),
            rows=available[np.argsort(labels[available], kind="stable")],
            offsets=np.concatenate([[0], np.cumsum(capacity)]),
        )

    def pick_cluster(
        self,
        cluster: int,
        members: np.ndarray,
        quota: int,
        embeddings: np.ndarray,
        quality: np.ndarray | None,
        seed: np.random.SeedSequence,
    ) -> ClusterPicks:
        """One cluster's picks, drawn from its own stream of ``seed`` (what every engine runs
        per cluster, wherever it runs it)."""
        return self.pick(cluster, members, quota, embeddings, quality, stream(seed, cluster))

    def assemble(
        self, plan: ClusterPlan, picks: Mapping[int, ClusterPicks], quality: np.ndarray | None
    ) -> SelectionResult:
        """The picks of every cluster of ``plan`` as one result, ordered round-robin."""
        ordered: list[tuple[int, int, int, float, str]] = []
        for j in plan.clusters:
            got = picks[j]
            for rank, (row, score, reason) in enumerate(
                zip(got.rows, got.scores, got.reasons, strict=True)
            ):
                ordered.append((rank, j, int(row), float(score), reason))
        ordered.sort(key=lambda p: (p[0], p[1]))
        indices = np.array([p[2] for p in ordered], dtype=np.int64)
        return SelectionResult(
            method=self.name,
            budget=plan.budget,
            indices=indices,
            scores=np.array([p[3] for p in ordered], dtype=np.float64),
            score_name=self.score_name,
            reasons=[p[4] for p in ordered],
            labels=plan.labels,
            quotas=plan.quotas,
            counts=np.bincount(plan.labels[indices], minlength=len(plan.quotas)),
            notes=self.notes(quality),
        )


def weighted_order(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order without replacement where P(next = i) ∝ weights[i] (Efraimidis–Spirakis).

    Zero-weight items come last, in uniformly random order.
    """
    u = rng.random(len(weights))
    with np.errstate(divide="ignore"):
        keys = np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1.0), -np.inf)
    return np.lexsort((-u, -keys))
