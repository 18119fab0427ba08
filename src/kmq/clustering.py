"""Seeded faiss k-means on L2-normalised vectors, and choosing k by silhouette score."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import faiss
import numpy as np
from tqdm.auto import tqdm

from kmq.chunks import CHUNK_ROWS, iter_rows, take_rows
from kmq.errors import KmqError
from kmq.random import SeedLike, as_int_seed, make_rng

log = logging.getLogger("kmq")

DEFAULT_NITER = 10
# AFK-MC² seeding costs about chain length × k² distance computations. Up to SMALL_K the chain
# has faiss' default length; above, it shortens to AFKMC2_CHAIN · SMALL_K / k (at least
# MIN_CHAIN) and the Lloyd steps stop early once one improves the objective by less than
# LARGE_K_EARLY_STOP (relative). On mix-small's MiniLM vectors this keeps k = 1024 within a
# fraction of a percent of the official configuration's objective in 6 steps instead of 10
# (benchmarks/results/clustering.md); at k = 256 the early stop would cost 0.6 % of objective.
AFKMC2_CHAIN = 50
SMALL_K = 256
MIN_CHAIN = 10
LARGE_K_EARLY_STOP = 0.005
SILHOUETTE_SAMPLE = 5000
SAMPLE_PER_CENTROID = 256  # faiss' max_points_per_centroid: rows it fits each centre on
SAMPLE_FLOOR = 100_000


@dataclass
class Clustering:
    """A fitted clustering of a pool: labels, centroids and the k-means objective."""

    labels_: np.ndarray  # (n,) int64 (int32 from the streaming path)
    centroids_: np.ndarray  # (k, d) float32
    inertia_: float  # Σ squared L2 distance of every row to its centre
    sizes_: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.sizes_ = np.bincount(self.labels_, minlength=len(self.centroids_))

    @property
    def k(self) -> int:
        return len(self.centroids_)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def kmeans(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: SeedLike = 0,
    niter: int = DEFAULT_NITER,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
) -> Clustering:
    """k-means on the L2-normalised ``embeddings`` (faiss, seeded) and the assignment of every row.

    Centres start from AFK-MC² seeding (a fast k-means++ approximation), which reaches the
    official configuration's objective (random starts, niter=300, nredo=5) within a few tenths
    of a percent in ``niter=10`` Lloyd steps (see benchmarks/clustering.py); above k = 256 the
    seeding chain is shorter and ``niter`` is a cap (see :func:`seeding_settings`). They are
    fitted on at most ``max_points_per_centroid * k`` rows (faiss' seeded sampling); every row
    is then assigned to its nearest centre by :func:`assign`, chunk by chunk, as the Ray engine
    assigns them (so both give the same labels and inertia to the last bit).
    """
    km = _train(normalize(embeddings), k, seed, niter, nredo, max_points_per_centroid)
    centroids = np.asarray(km.centroids, dtype=np.float32)
    labels, distances = assign(embeddings, centroids)
    return Clustering(
        labels_=labels.astype(np.int64),
        centroids_=centroids,
        inertia_=float(distances.astype(np.float64).sum()),
    )


def fit_centroids(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: SeedLike = 0,
    niter: int = DEFAULT_NITER,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
) -> np.ndarray:
    """The (k, d) float32 centres :func:`kmeans` fits, without assigning the rows (the streaming
    path fits on a sample and assigns every row with :func:`assign`)."""
    km = _train(normalize(embeddings), k, seed, niter, nredo, max_points_per_centroid)
    return np.asarray(km.centroids, dtype=np.float32)


def assign(
    embeddings: np.ndarray,
    centroids: np.ndarray,
    *,
    chunk_rows: int = CHUNK_ROWS,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centre of every row (int32) and its squared L2 distance (float32).

    Rows are L2-normalised as :func:`kmeans` does and read ``chunk_rows`` at a time (a memory
    map never lands in memory whole); the labels equal those :func:`kmeans` gives for the
    same centres.
    """
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(embeddings), dtype=np.int32)
    distances = np.empty(len(embeddings), dtype=np.float32)
    rows = iter_rows(
        embeddings, chunk_rows=chunk_rows, show_progress=show_progress, desc="assigning"
    )
    for start, chunk in rows:
        d, i = index.search(normalize(chunk), 1)
        labels[start : start + len(chunk)] = i[:, 0]
        distances[start : start + len(chunk)] = d[:, 0]
    return labels, distances


def sample_size(n: int, k_max: int, requested: int | None = None) -> int:
    """Rows k-means is fitted on when it fits on a sample: ``requested``, else
    ``max(256·k_max, 100,000)``; at most ``n``."""
    wanted = requested if requested is not None else max(SAMPLE_PER_CENTROID * k_max, SAMPLE_FLOOR)
    return min(n, wanted)


def kmeans_sample(
    embeddings: np.ndarray, size: int, *, seed: int, show_progress: bool = False
) -> np.ndarray:
    """``size`` rows drawn without replacement with ``seed`` (every row, in order, when ``size``
    covers the pool), as float32 in input order, read chunk by chunk."""
    n = len(embeddings)
    rows = np.arange(n) if size >= n else np.sort(make_rng(seed).choice(n, size, replace=False))
    return take_rows(embeddings, rows, show_progress=show_progress, desc="k-means sample")


def centroid_cosine(distances: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine of each unit row to its centre, from the squared L2 distance ``d²`` to it:
    ``(1 + |c|² - d²) / (2|c|)``."""
    norm2 = (centroids.astype(np.float64) ** 2).sum(1)[labels]
    cosine = (1.0 + norm2 - distances) / (2.0 * np.sqrt(np.maximum(norm2, 1e-24)))
    return np.clip(cosine, -1.0, 1.0).astype(np.float32)


def seeding_settings(k: int) -> tuple[int, float]:
    """``(afkmc2_chain_length, early_stop_threshold)`` for ``k`` centres (see the constants)."""
    if k <= SMALL_K:
        return AFKMC2_CHAIN, 0.0
    return max(MIN_CHAIN, AFKMC2_CHAIN * SMALL_K // k), LARGE_K_EARLY_STOP


def _train(
    x: np.ndarray, k: int, seed: SeedLike, niter: int, nredo: int, max_points_per_centroid: int
) -> faiss.Kmeans:
    """A faiss k-means trained on the normalised rows ``x`` (see :func:`kmeans`)."""
    n = len(x)
    if not 1 <= k <= n:
        raise KmqError(f"k must be between 1 and the number of rows ({n}), got k={k}")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=as_int_seed(seed) % (2**31),
        max_points_per_centroid=max_points_per_centroid,
        init_method=faiss.ClusteringInitMethod_AFK_MC2,
        verbose=False,
    )
    km.cp.min_points_per_centroid = 1
    km.cp.afkmc2_chain_length, km.cp.early_stop_threshold = seeding_settings(k)
    km.train(x)
    return km


def silhouette(x: np.ndarray, labels: np.ndarray, *, block: int = 2048) -> float:
    """Mean silhouette coefficient with Euclidean distance (rows of singleton clusters score 0)."""
    n = len(x)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(counts) < 2:
        raise KmqError("the silhouette score needs at least 2 clusters in the sample")
    onehot = np.zeros((n, len(counts)), dtype=np.float32)
    onehot[np.arange(n), inverse] = 1.0
    sq = (x.astype(np.float32) ** 2).sum(1)
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        dist = np.sqrt(np.maximum(d2, 0.0))
        sums = dist @ onehot
        own = inverse[start:stop]
        rows = np.arange(stop - start)
        own_count = counts[own] - 1
        a = np.where(own_count > 0, sums[rows, own] / np.maximum(own_count, 1), 0.0)
        means = sums / counts[None, :]
        means[rows, own] = np.inf
        b = means.min(1)
        s = np.where(own_count > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
        scores[start:stop] = s
    return float(scores.mean())


@dataclass
class KChoice:
    """The outcome of ``choose_k``: the best k and every score on the grid."""

    k: int
    scores: dict[int, float]
    sample_size: int
    seconds: float


def default_k_grid(n: int, budget: int | None = None) -> list[int]:
    """Powers of two from 8 up to min(4096, n // 4, budget)."""
    top = min(4096, n // 4, budget if budget else n)
    grid = [k for k in (2**p for p in range(3, 13)) if k <= top]
    return grid or [max(2, min(top, n // 2))]


def choose_k(
    embeddings: np.ndarray,
    grid: Sequence[int],
    *,
    seed: SeedLike = 0,
    sample_size: int = SILHOUETTE_SAMPLE,
    niter: int = DEFAULT_NITER,
    show_progress: bool = False,
) -> KChoice:
    """The k on ``grid`` with the highest silhouette score (the paper's §5 criterion).

    k-means is fitted on all rows for each k; the silhouette is computed on the same seeded
    sample of ``sample_size`` rows for every k, so scores are comparable across the grid.
    """
    started = time.perf_counter()
    x = normalize(embeddings)
    rng = make_rng(seed)
    idx = np.sort(rng.choice(len(x), size=min(sample_size, len(x)), replace=False))
    scores: dict[int, float] = {}
    for k in tqdm(grid, desc="choosing k", unit="k", disable=not show_progress):
        if not 2 <= k <= len(x):
            raise KmqError(f"every k on the grid must be between 2 and {len(x)}, got {k}")
        labels = kmeans(x, k, seed=seed, niter=niter).labels_
        scores[int(k)] = silhouette(x[idx], labels[idx])
    best = max(scores, key=lambda k: (scores[k], -k))
    return KChoice(
        k=best, scores=scores, sample_size=len(idx), seconds=time.perf_counter() - started
    )


def resolve_k(
    embeddings: np.ndarray,
    k: int | Literal["auto"],
    *,
    budget: int | None = None,
    seed: SeedLike = 0,
    k_grid: Sequence[int] | None = None,
    niter: int = DEFAULT_NITER,
    silhouette_sample: int = SILHOUETTE_SAMPLE,
    show_progress: bool = False,
    n_pool: int | None = None,
) -> tuple[int, dict[int, float] | None]:
    """``k`` itself, or (``"auto"``) the k on ``k_grid`` with the best silhouette on
    ``embeddings``, and the scores. The default grid follows ``n_pool`` rows (default: all of
    ``embeddings``; the streaming path passes a sample and the pool's size)."""
    if k != "auto":
        return int(k), None
    n = len(embeddings) if n_pool is None else n_pool
    grid = list(k_grid) if k_grid else default_k_grid(n, budget)
    choice = choose_k(
        embeddings,
        grid,
        seed=seed,
        sample_size=silhouette_sample,
        niter=niter,
        show_progress=show_progress,
    )
    log.info(
        "k by silhouette on %d rows: %s → k=%d",
        choice.sample_size,
        ", ".join(f"{kk}: {s:.4f}" for kk, s in choice.scores.items()),
        choice.k,
    )
    return choice.k, choice.scores
