"""What every selector returns, and the shared machinery of the per-cluster selectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kmq.allocation import allocate, weighted_quotas
from kmq.errors import KmqError
from kmq.random import SeedLike, seed_sequence, stream


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
        n = len(embeddings)
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
        base = seed_sequence(seed)
        picks: list[tuple[int, int, int, float, str]] = []
        for j in np.flatnonzero(quotas):
            members = np.flatnonzero(mask & (labels == j))
            got = self.pick(
                int(j), members, int(quotas[j]), embeddings, quality, stream(base, int(j))
            )
            for rank, (row, score, reason) in enumerate(
                zip(got.rows, got.scores, got.reasons, strict=True)
            ):
                picks.append((rank, int(j), int(row), float(score), reason))
        picks.sort(key=lambda p: (p[0], p[1]))
        indices = np.array([p[2] for p in picks], dtype=np.int64)
        return SelectionResult(
            method=self.name,
            budget=int(budget),
            indices=indices,
            scores=np.array([p[3] for p in picks], dtype=np.float64),
            score_name=self.score_name,
            reasons=[p[4] for p in picks],
            labels=labels,
            quotas=quotas,
            counts=np.bincount(labels[indices], minlength=k),
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
