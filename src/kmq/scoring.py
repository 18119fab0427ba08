"""``kmq score`` as functions: a pool's quality scores, cached, and a summary of them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmq.atomic import atomic_path
from kmq.errors import KmqError
from kmq.examples import Example
from kmq.formats import FieldMap, load_pool
from kmq.quality import get_quality_scorer
from kmq.quality.cache import score_cached

log = logging.getLogger("kmq")


@dataclass
class QualityScores:
    """Scores of a pool under one scorer, and the facts the manifest records about them."""

    values: np.ndarray  # float64, NaN = not scored
    name: str
    direction: str
    fingerprint: str
    cache_hit: bool

    @property
    def column(self) -> str:
        return f"{self.name}_score"

    def summary(self) -> dict[str, Any]:
        finite = self.values[np.isfinite(self.values)]
        stats = {}
        if len(finite):
            q = np.quantile(finite, [0.0, 0.25, 0.5, 0.75, 1.0])
            stats = {
                "mean": float(finite.mean()),
                "min": float(q[0]),
                "p25": float(q[1]),
                "median": float(q[2]),
                "p75": float(q[3]),
                "max": float(q[4]),
            }
        return {
            "scorer": self.name,
            "column": self.column,
            "direction": self.direction,
            "fingerprint": self.fingerprint,
            "cache_hit": self.cache_hit,
            "rows": len(self.values),
            "missing": int(len(self.values) - len(finite)),
            **stats,
        }


def compute_quality(
    examples: Sequence[Example],
    name: str,
    *,
    options: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> QualityScores:
    """Scores of ``examples`` under the scorer ``name`` (cached by content + scorer settings)."""
    scorer = get_quality_scorer(name, cache_dir=cache_dir, **(options or {}))
    values, hit = score_cached(examples, scorer, cache_dir=cache_dir, show_progress=show_progress)
    scores = QualityScores(
        values=np.asarray(values, dtype=np.float64),
        name=scorer.name,
        direction=scorer.direction,
        fingerprint=scorer.fingerprint(),
        cache_hit=hit,
    )
    missing = scores.summary()["missing"]
    if missing and missing == len(examples):
        failures = getattr(scorer, "failure_summary", None)
        detail = f": {failures()}" if failures is not None else ""
        raise KmqError(
            f"--quality {name}: none of the {len(examples)} rows could be scored{detail}. "
            "Nothing was cached; fix the scorer (or its endpoint) and rerun"
        )
    if missing:
        log.warning(
            "%s: %d of %d rows could not be scored (NaN; not cached, tried again on the next run)",
            name,
            missing,
            len(examples),
        )
    return scores


def fill_missing(values: np.ndarray) -> np.ndarray:
    """NaN scores replaced by the lowest finite score (such rows are drawn least often)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not finite.any():
        raise KmqError("no row could be scored: every quality score is missing")
    return np.where(finite, values, values[finite].min())


@dataclass
class ScoreConfig:
    """Everything ``kmq score`` takes."""

    input: str
    out: str
    quality: str
    options: dict[str, Any] = field(default_factory=dict)
    fields: FieldMap = field(default_factory=FieldMap)
    format: str | None = None
    on_invalid: Literal["error", "skip"] = "error"
    cache_dir: str | None = None
    progress: bool = True


def score_file(config: ScoreConfig) -> QualityScores:
    """Score every valid row of ``config.input``; write ``index, id, <name>_score`` as Parquet."""
    pool = load_pool(
        config.input, fields=config.fields, format=config.format, on_invalid=config.on_invalid
    )
    if not pool.examples:
        raise KmqError(f"{config.input}: no valid rows to score ({len(pool.rejects)} rejected)")
    scores = compute_quality(
        pool.examples,
        config.quality,
        options=config.options,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        show_progress=config.progress,
    )
    table = pa.table(
        {
            "index": np.array([ex.row for ex in pool.examples], dtype=np.int64),
            "id": [ex.id for ex in pool.examples],
            scores.column: scores.values,
        }
    )
    out = Path(config.out)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return scores
