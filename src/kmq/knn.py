"""Exact k-nearest-neighbour graphs by cosine similarity (faiss inner products, blocked).

The graph behind the facility-location selectors: every pool row lists its ``k`` most similar
*candidate* rows (the rows that may be selected), itself included when it is a candidate.
Similarities are cosines of the L2-normalised vectors, clipped at 0 — a negative cosine means
"unrelated", and coverage must be non-negative for facility location to be monotone
submodular. The graph is directed and not symmetrised: ``y`` in ``N(x)`` does not put ``x`` in
``N(y)``. Facility location reads it as "a selected row ``s`` covers ``x`` with
``sim(x, s)`` if ``s`` is in ``N(x)``, else with 0"; :meth:`KnnGraph.reverse` gives, for each
candidate, the rows it can cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

from kmq.clustering import normalize
from kmq.errors import KmqError

QUERY_BLOCK = 16384


@dataclass
class KnnGraph:
    """``neighbors[x]``: the pool rows nearest to row ``x``; ``similarities[x]``: their cosines.

    Both are ``(n, k)``, in faiss' order (decreasing similarity); cosines are clipped at 0 and
    stored as float32.
    """

    neighbors: np.ndarray  # (n, k) int64 pool row indices
    similarities: np.ndarray  # (n, k) float32 in [0, 1]

    @property
    def n(self) -> int:
        return len(self.neighbors)

    def reverse(self) -> ReverseGraph:
        """For each pool row ``c``: the rows ``x`` with ``c`` in ``N(x)``, and ``sim(x, c)``.

        Within a row the points come in increasing order of ``x``.
        """
        flat = self.neighbors.ravel()
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=self.n)
        indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        k = self.neighbors.shape[1]
        return ReverseGraph(
            indptr=indptr,
            points=(order // k).astype(np.int64),
            similarities=self.similarities.ravel()[order].astype(np.float64),
        )

    def dense(self) -> np.ndarray:
        """The ``(n, n)`` similarity matrix ``S[x, c]`` the graph stands for (0 off the graph)."""
        out = np.zeros((self.n, self.n), dtype=np.float64)
        np.put_along_axis(out, self.neighbors, self.similarities.astype(np.float64), axis=1)
        return out


@dataclass
class ReverseGraph:
    """CSR of the transposed graph: ``points[indptr[c]:indptr[c + 1]]`` are covered by ``c``."""

    indptr: np.ndarray  # (n + 1,) int64
    points: np.ndarray  # (nnz,) int64
    similarities: np.ndarray  # (nnz,) float64

    def covered_by(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows candidate ``c`` covers and the similarity of each to ``c``."""
        lo, hi = self.indptr[c], self.indptr[c + 1]
        return self.points[lo:hi], self.similarities[lo:hi]


def knn_graph(
    embeddings: np.ndarray,
    n_neighbors: int,
    *,
    candidates: np.ndarray | None = None,
    show_progress: bool = False,
) -> KnnGraph:
    """The exact ``n_neighbors``-nearest-candidate graph of every row of ``embeddings``.

    ``candidates`` (row indices, default all rows) are the rows neighbours are searched among,
    so rows that cannot be selected do not use up anyone's ``k`` slots. ``k`` is
    ``min(n_neighbors, len(candidates))``. A candidate is always its own neighbour (forced
    into the last slot in the rare case exact duplicates crowd it out).
    """
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise KmqError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    x = normalize(embeddings)
    n = len(x)
    pool = np.arange(n, dtype=np.int64) if candidates is None else np.asarray(candidates)
    if len(pool) == 0:
        raise KmqError("the k-nearest-neighbour graph needs at least one candidate row")
    k = min(n_neighbors, len(pool))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x[pool])
    neighbors = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    for start in tqdm(range(0, n, QUERY_BLOCK), desc="knn graph", disable=not show_progress):
        stop = min(start + QUERY_BLOCK, n)
        d, i = index.search(x[start:stop], k)
        neighbors[start:stop] = pool[i]
        sims[start:stop] = d
    force_self(neighbors, sims, x, pool)
    np.maximum(sims, 0.0, out=sims)
    return KnnGraph(neighbors=neighbors, similarities=sims)


def force_self(neighbors: np.ndarray, sims: np.ndarray, x: np.ndarray, pool: np.ndarray) -> None:
    """Put every candidate into its own neighbour list (last slot) where it is missing."""
    missing = pool[~(neighbors[pool] == pool[:, None]).any(axis=1)]
    if len(missing):
        neighbors[missing, -1] = missing
        sims[missing, -1] = np.einsum("ij,ij->i", x[missing], x[missing])
