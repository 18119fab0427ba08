"""Quality scores cached per row, by the hash of each row's conversation and the scorer's
fingerprint; computed in resumable chunks (see :mod:`kmq.rowcache`).

Only the rows asked for are looked up, and only those the store lacks are scored, so scoring a
subset, a superset or an appended pool (or just some candidates of each cluster) reuses every
score already computed. A score that is not a finite number (a row the scorer could not score,
e.g. a failed request to a remote judge) is returned but never stored: it is tried again on
the next run. Scorers whose ``cacheable`` is False (scores read from the input, not computed
from the conversation) are not cached at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kmq.cache import store_key
from kmq.cachedir import default_cache_dir
from kmq.examples import Example
from kmq.quality import QualityScorer
from kmq.rowcache import RowStore, row_keys

CHUNK_ROWS = 256


def conversation_text(example: Example) -> str:
    """Every turn with its role, canonically serialised (what a scorer may look at)."""
    turns = [[m.role, m.content] for m in example.messages]
    return json.dumps(turns, ensure_ascii=False, separators=(",", ":"))


def score_store(scorer: QualityScorer, cache_dir: Path | None = None) -> RowStore:
    """The store of ``scorer``'s scores (one per scorer name + fingerprint)."""
    settings = {"kind": "scores", "scorer": scorer.name, "fingerprint": scorer.fingerprint()}
    return RowStore((cache_dir or default_cache_dir()) / "scores" / store_key(settings), settings)


def score_cached(
    examples: Sequence[Example],
    scorer: QualityScorer,
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    cache_dir: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """``scorer``'s scores of ``examples[rows]`` (every example when ``rows`` is None), in that
    order (float64, NaN = not scored), and whether every one came from the cache.

    Missing rows are scored in chunks of ``chunk_rows``, each saved as it finishes: an
    interrupted run resumes without scoring a finished chunk twice.
    """
    chosen = np.arange(len(examples)) if rows is None else np.asarray(rows, dtype=np.int64)
    picked = [examples[i] for i in chosen.tolist()]
    if not getattr(scorer, "cacheable", True):
        return np.asarray(scorer.score(picked), dtype=np.float64), False
    store = score_store(scorer, cache_dir)

    def compute(shards: list[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        for number, shard in enumerate(shards):
            values = scorer.score([picked[i] for i in shard.tolist()])
            yield number, np.asarray(values, dtype=np.float64)

    keys = row_keys(conversation_text(example) for example in picked)
    located, unstored, computed = store.compute(
        keys,
        compute,
        shape=(),
        dtype=np.dtype(np.float64),
        shard_rows=chunk_rows,
        keep=np.isfinite,
        desc=f"scoring ({scorer.name})",
        show_progress=show_progress,
    )
    out = np.full(len(picked), np.nan, dtype=np.float64)
    stored = np.flatnonzero(located.segment >= 0)
    found = np.empty(len(stored), dtype=np.float64)
    located.gather(stored, found)
    out[stored] = found
    for row, value in unstored.items():
        out[row] = value
    store.compact()
    return out, computed == 0
