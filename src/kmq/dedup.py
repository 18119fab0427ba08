"""Semantic de-duplication (SemDeDup, Abbas et al. 2023) and the greedy walk it shares with Deita.

:func:`threshold_walk` goes through rows in a given order and keeps a row unless its cosine to
a row kept before it passes a bound. It works in blocks: the cosines of a block to every row
kept so far are one matrix product (chunked over the kept rows, so memory stays at
``block × chunk`` floats), and conflicts inside the block are resolved in order with one
vectorised update per kept row. The cost is O(rows walked × rows kept × d).

:func:`semdedup` runs the walk inside every cluster, ordered by cosine to the cluster centroid
(O(m²·d) for a cluster of m rows). Unlike the SemDeDup paper's code, which drops a row similar
to *any* earlier row of its cluster, a row is dropped only when it is similar to a *kept* row:
every removed row has a kept twin, and no two kept rows of a cluster are more similar than
``1 − eps``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm

from kmq.atomic import write_with
from kmq.clustering import normalize
from kmq.errors import KmqError

KEEP_ORDERS = ("farthest", "closest")
BLOCK = 512
CHUNK = 8192


@dataclass
class Walk:
    """The outcome of :func:`threshold_walk`; positions index the walk ``order``."""

    kept: np.ndarray  # positions kept, ascending
    nearest: np.ndarray  # for each kept row: its max cosine to an earlier kept row (-inf: none)
    removed: np.ndarray  # positions dropped, ascending
    twin: np.ndarray  # for each dropped row: the position of its most similar earlier kept row
    similarity: np.ndarray  # ... and that cosine
    examined: int  # rows walked (less than len(order) when the limit was reached)


def threshold_walk(
    x: np.ndarray,
    order: np.ndarray,
    bound: float,
    *,
    inclusive: bool = False,
    limit: int | None = None,
    block: int = BLOCK,
    chunk: int = CHUNK,
    show_progress: bool = False,
) -> Walk:
    """Walk the rows ``x[order]`` (``x`` L2-normalised) and keep each row unless its cosine to
    a row kept before it is ``> bound`` (``>= bound`` if ``inclusive``); stop after ``limit``
    kept rows."""
    n_walk = len(order)
    cap = n_walk if limit is None else min(limit, n_walk)
    kept_vecs = np.empty((cap, x.shape[1]), dtype=np.float32)
    n_kept = 0
    kept: list[np.ndarray] = []
    nearest: list[np.ndarray] = []
    removed: list[np.ndarray] = []
    twin_kept_index: list[np.ndarray] = []
    similarity: list[np.ndarray] = []
    examined = 0
    bar = tqdm(total=cap, desc="kept", unit="row", disable=not show_progress)
    for start in range(0, n_walk, block):
        xb = np.ascontiguousarray(x[order[start : start + block]], dtype=np.float32)
        best, arg = best_match(xb, kept_vecs[:n_kept], chunk)
        keep, walked = resolve_block(xb, best, arg, bound, inclusive, n_kept, cap, kept_vecs)
        n_kept += int(keep.sum())
        bar.update(int(keep.sum()))
        examined = start + walked
        kept_here = np.flatnonzero(keep)
        dropped = np.flatnonzero(~keep[:walked])
        kept.append(start + kept_here)
        nearest.append(best[kept_here])
        removed.append(start + dropped)
        twin_kept_index.append(arg[dropped])
        similarity.append(best[dropped])
        if n_kept == cap:
            break
    bar.close()
    kept_pos = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    twin_idx = np.concatenate(twin_kept_index) if twin_kept_index else np.zeros(0, np.int64)
    return Walk(
        kept=kept_pos.astype(np.int64),
        nearest=np.concatenate(nearest).astype(np.float64) if nearest else np.zeros(0),
        removed=(np.concatenate(removed) if removed else np.zeros(0)).astype(np.int64),
        twin=kept_pos[twin_idx].astype(np.int64),
        similarity=np.concatenate(similarity).astype(np.float64) if similarity else np.zeros(0),
        examined=examined,
    )


def best_match(xb: np.ndarray, kept: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``xb``: the max cosine to a row of ``kept`` and which (first on ties)."""
    best = np.full(len(xb), -np.inf, dtype=np.float32)
    arg = np.full(len(xb), -1, dtype=np.int64)
    rows = np.arange(len(xb))
    for c0 in range(0, len(kept), chunk):
        sims = xb @ kept[c0 : c0 + chunk].T
        a = sims.argmax(axis=1)
        v = sims[rows, a]
        better = v > best
        best[better] = v[better]
        arg[better] = a[better] + c0
    return best, arg


def resolve_block(
    xb: np.ndarray,
    best: np.ndarray,
    arg: np.ndarray,
    bound: float,
    inclusive: bool,
    n_kept: int,
    cap: int,
    kept_vecs: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Decide the rows of one block in order; ``best``/``arg`` are updated in place.

    Returns which rows were kept and how many rows were walked (the block, or up to the row
    that filled ``cap``). Kept rows are appended to ``kept_vecs``.
    """
    gram = xb @ xb.T
    keep = np.zeros(len(xb), dtype=bool)
    for i in range(len(xb)):
        b = float(best[i])
        if b > bound or (inclusive and b == bound):
            continue
        keep[i] = True
        kept_vecs[n_kept] = xb[i]
        n_kept += 1
        if n_kept == cap:
            return keep, i + 1
        later = gram[i, i + 1 :]
        better = later > best[i + 1 :]
        best[i + 1 :][better] = later[better]
        arg[i + 1 :][better] = n_kept - 1
    return keep, len(xb)


@dataclass
class DedupResult:
    """Which rows survive de-duplication, and for each removed row the kept row it duplicates."""

    keep: np.ndarray  # (n,) bool
    removed: np.ndarray  # removed rows, ascending
    twin: np.ndarray  # for each removed row: the kept row it duplicates
    similarity: np.ndarray  # their cosine (> 1 − eps)
    eps: float

    def write_jsonl(self, path: Path) -> None:
        """One ``{"row", "twin", "similarity"}`` line per removed row, written atomically."""

        def write(fh: IO[Any]) -> None:
            for row, twin, sim in zip(self.removed, self.twin, self.similarity, strict=True):
                record = {"row": int(row), "twin": int(twin), "similarity": round(float(sim), 6)}
                fh.write(json.dumps(record) + "\n")

        write_with(Path(path), write)


def semdedup(
    embeddings: np.ndarray,
    labels: np.ndarray,
    eps: float,
    *,
    keep: str = "farthest",
    centroids: np.ndarray | None = None,
) -> DedupResult:
    """SemDeDup: inside each cluster, drop rows with cosine ``> 1 − eps`` to a kept row.

    Rows of a cluster are walked by cosine to the cluster centroid — ``keep="farthest"`` (the
    paper's default) keeps the row farthest from the centroid first, ``"closest"`` the nearest
    — ties by row index. ``centroids`` default to the normalised mean of each cluster's
    normalised rows (pass k-means centres to use those).
    """
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise KmqError(f"eps must be a number in (0, 1), got {eps!r}")
    if keep not in KEEP_ORDERS:
        raise KmqError(f"keep must be one of {', '.join(KEEP_ORDERS)}; got {keep!r}")
    x = normalize(embeddings)
    labels = np.asarray(labels)
    if labels.shape != (len(x),):
        raise KmqError(f"labels must have one entry per row ({len(x)}), got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise KmqError(f"labels must be cluster ids >= 0, got {labels.min()}")
    by_cluster = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[by_cluster], prepend=-1))
    keep_mask = np.ones(len(x), dtype=bool)
    removed, twins, sims = [], [], []
    for members in np.split(by_cluster, starts[1:]):
        if len(members) < 2:
            continue
        j = int(labels[members[0]])
        xm = x[members]
        centre = xm.mean(axis=0) if centroids is None else centroids[j]
        # row-wise product and sum, not a matrix product: identical rows get identical cosines
        cos = (xm * normalize(centre[None, :])[0]).sum(axis=1)
        rows = members[np.lexsort((members, cos if keep == "farthest" else -cos))]
        walk = threshold_walk(x, rows, 1.0 - eps)
        keep_mask[rows[walk.removed]] = False
        removed.append(rows[walk.removed])
        twins.append(rows[walk.twin])
        sims.append(walk.similarity)
    rem = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
    by_row = np.argsort(rem)
    return DedupResult(
        keep=keep_mask,
        removed=rem[by_row],
        twin=(np.concatenate(twins) if twins else np.zeros(0, np.int64))[by_row],
        similarity=(np.concatenate(sims) if sims else np.zeros(0))[by_row],
        eps=float(eps),
    )
