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
from kmq.errors import KmqError, ParameterError
from kmq.examples import Example
from kmq.formats import FieldMap, load_pool
from kmq.quality import QualityScorer, get_quality_scorer
from kmq.quality.cache import score_cached

log = logging.getLogger("kmq")


@dataclass
class QualityScores:
    """Scores of a pool under one scorer, and the facts the manifest records about them."""

    values: np.ndarray  # float64, one per pool row, NaN = not scored
    name: str
    direction: str
    fingerprint: str
    cache_hit: bool
    rows_scored: int  # rows the scorer was run on (the others are NaN by design)

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
            "rows_scored": self.rows_scored,
            "missing": int(self.rows_scored - len(finite)),
            **stats,
        }


def score_rows(
    scorer: QualityScorer,
    examples: Sequence[Example],
    rows: np.ndarray,
    *,
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """``scorer``'s scores of ``examples[rows]`` (float64, NaN = not scored) and whether they
    all came from the cache: every quality score kmq computes goes through here."""
    subset = [examples[i] for i in rows]
    values, hit = score_cached(subset, scorer, cache_dir=cache_dir, show_progress=show_progress)
    return np.asarray(values, dtype=np.float64), hit


def compute_quality(
    examples: Sequence[Example],
    name: str,
    *,
    rows: np.ndarray | None = None,
    options: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> QualityScores:
    """Scores of ``examples`` under the scorer ``name`` (cached by content + scorer settings):
    of every row, or only of ``rows`` (the others are NaN)."""
    scorer = get_quality_scorer(name, cache_dir=cache_dir, **(options or {}))
    wanted = np.arange(len(examples)) if rows is None else np.asarray(rows, dtype=np.int64)
    values, hit = score_rows(
        scorer, examples, wanted, cache_dir=cache_dir, show_progress=show_progress
    )
    full = np.full(len(examples), np.nan, dtype=np.float64)
    full[wanted] = values
    scores = QualityScores(
        values=full,
        name=scorer.name,
        direction=scorer.direction,
        fingerprint=scorer.fingerprint(),
        cache_hit=hit,
        rows_scored=len(wanted),
    )
    missing = scores.summary()["missing"]
    if missing and missing == len(wanted):
        failures = getattr(scorer, "failure_summary", None)
        detail = f": {failures()}" if failures is not None else ""
        raise ParameterError(
            "quality",
            f"{{param}} {name!r}: none of the {len(wanted)} rows could be scored{detail}. "
            "Nothing was cached; fix the scorer (or its endpoint) and rerun",
        )
    if missing:
        log.warning(
            "%s: %d of %d rows could not be scored (NaN; not cached, tried again on the next run)",
            name,
            missing,
            len(wanted),
        )
    return scores


def fill_missing(values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """NaN scores of ``rows`` (default: every row) replaced by the lowest finite score among
    them (such rows are drawn least often); the other rows are left as they are."""
    at = np.arange(len(values)) if rows is None else np.asarray(rows, dtype=np.int64)
    scored = values[at]
    finite = np.isfinite(scored)
    if finite.all():
        return values
    if not finite.any():
        raise KmqError("no row could be scored: every quality score is missing")
    filled = values.copy()
    filled[at] = np.where(finite, scored, scored[finite].min())
    return filled


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
