"""Quality scores cached by content + scorer fingerprint, computed in resumable chunks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kmq.cache import compute_sharded, content_hash, default_cache_dir
from kmq.examples import Example
from kmq.quality import QualityScorer

CHUNK_ROWS = 256


def conversation_text(example: Example) -> str:
    """Every turn with its role, canonically serialised (what a scorer may look at)."""
    turns = [[m.role, m.content] for m in example.messages]
    return json.dumps(turns, ensure_ascii=False, separators=(",", ":"))


def score_key(examples: Sequence[Example], scorer: QualityScorer) -> str:
    texts = [conversation_text(ex) for ex in examples]
    parts = [scorer.name, scorer.fingerprint(), content_hash(texts)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def score_cached(
    examples: Sequence[Example],
    scorer: QualityScorer,
    *,
    cache_dir: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """``scorer``'s scores of ``examples`` (float64, NaN = not scored) and whether cached.

    Chunks of ``chunk_rows`` are saved as they finish: an interrupted run resumes at the first
    missing chunk and never scores a finished chunk twice.
    """

    def score(start: int, stop: int) -> np.ndarray:
        return np.asarray(scorer.score(examples[start:stop]), dtype=np.float64)

    return compute_sharded(
        (cache_dir or default_cache_dir()) / "scores",
        score_key(examples, scorer),
        len(examples),
        score,
        meta={"scorer": scorer.name, "fingerprint": scorer.fingerprint()},
        shard_rows=chunk_rows,
        desc=f"scoring ({scorer.name})",
        show_progress=show_progress,
    )
