"""The output folder of ``kmq select``: its file names, the writers of its files and the
manifest, and :class:`SelectRun` (what a run returns)."""

from __future__ import annotations

import json
import platform
import resource
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmq._imports import require
from kmq._version import __version__
from kmq.atomic import atomic_path, write_json
from kmq.clustering import Clustering
from kmq.config import SelectConfig, input_label
from kmq.dedup import DedupResult
from kmq.errors import KmqError
from kmq.exact import DUPLICATES
from kmq.export import check_output_format, to_record
from kmq.formats import LoadedPool
from kmq.selectors import SelectionResult

if TYPE_CHECKING:
    from kmq.streaming import StreamedPool

MANIFEST = "manifest.json"


TABLE = "selection.parquet"


REJECTS = "rejects.jsonl"


CLUSTERS = "clusters.npz"


DEDUP = "dedup.jsonl"


@dataclass
class Manifest:
    """``manifest.json``, the record of one ``kmq select`` run: written by :meth:`write`, read
    back by :meth:`read` (``kmq inspect``, ``kmq report``, ``--config`` replays, the
    benchmarks).

    The sections stay JSON objects: ``config`` (the whole :class:`~kmq.config.SelectConfig`),
    ``input`` (path, sha256, kind, compressed, format), ``counts`` (records, valid, rejected,
    excluded…, budget, selected, shortfall), ``embedding`` (encoder, view, dim, cache_hit; None
    when nothing was embedded), ``quality`` (the scorer's summary; None without quality),
    ``clusters`` (k, inertia, silhouette per k tried, rows per cluster in the pool, quota and
    selection; None without clustering), ``sources`` (rows per source and their entropy; None
    when no row has a source), ``timings_s`` (seconds per stage), ``outputs`` (the file of each
    output, None when not written), ``checks`` (rejects per reason, repairs), ``statistics``
    (rows, tokens, turns and characters of the pool and the selection, per source and per
    cluster, and the token budget's quotas: see :mod:`kmq.statistics`; None in streaming runs)
    and, in streaming runs only, ``streaming``. Keys this version does not know are kept in
    ``extra``.
    """

    tool: str
    version: str
    python: str
    config: dict[str, Any]
    seed: int
    input: dict[str, Any]
    counts: dict[str, Any]
    method: str
    score_name: str
    notes: list[str]
    embedding: dict[str, Any] | None
    quality: dict[str, Any] | None
    clusters: dict[str, Any] | None
    sources: dict[str, Any] | None
    timings_s: dict[str, float]
    peak_rss_mb: float | None
    outputs: dict[str, Any]
    streaming: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    statistics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int | None:
        """The number of clusters the run selected with (None when it did not cluster)."""
        return None if self.clusters is None else int(self.clusters["k"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in the file's key order (``streaming`` only in streaming runs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if self.streaming is None:
            del out["streaming"]
        return out | self.extra

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """A manifest from its JSON object; sections that older versions did not write are
        None."""
        names = {f.name for f in fields(cls)} - {"extra"}
        if not isinstance(data, dict) or data.get("tool") != "kmq" or "config" not in data:
            raise KmqError("not a manifest.json written by kmq select")
        known: dict[str, Any] = {name: data.get(name) for name in names}
        known["notes"] = known["notes"] or []
        known["timings_s"] = known["timings_s"] or {}
        known["outputs"] = known["outputs"] or {}
        extra = {key: value for key, value in data.items() if key not in names}
        return cls(**known, extra=extra)

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """The manifest of an output folder, or a ``manifest.json`` itself."""
        file = Path(path)
        if file.is_dir():
            file = file / MANIFEST
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KmqError(f"{path}: no such file") from None
        except json.JSONDecodeError as exc:
            raise KmqError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        try:
            return cls.from_dict(data)
        except KmqError as exc:
            raise KmqError(f"{file}: {exc}") from None

    def write(self, folder: Path) -> Path:
        """``folder/manifest.json``, written atomically; write it last: the folder is complete."""
        path = folder / MANIFEST
        write_json(path, self.to_dict())
        return path


@dataclass
class SelectRun:
    """What :func:`select_file` did: the result, the pool and the manifest it wrote.

    ``result.indices`` index the pool's valid rows; :attr:`rows` are the picks' rows in the
    input (the same when no row was rejected), so ``dataset.select(run.rows)`` is the selection.
    """

    result: SelectionResult
    pool: LoadedPool | StreamedPool
    manifest: Manifest
    out: Path

    @property
    def rows(self) -> list[int]:
        """The input row (0-based record index) of every pick, in pick order."""
        if isinstance(self.pool, LoadedPool):
            return [self.pool.examples[i].row for i in self.result.indices]
        return self.pool.rows[self.result.indices].tolist()

    @property
    def ids(self) -> list[str]:
        """The id of every pick, in pick order."""
        if isinstance(self.pool, LoadedPool):
            return [self.pool.examples[i].id for i in self.result.indices]
        return [self.pool.ids[i] for i in self.result.indices]

    def table(self) -> pa.Table:
        """``selection.parquet`` as an Arrow table: one row per pick (pick order, input row,
        id, cluster, source, quality, score, reason)."""
        return pq.read_table(self.out / TABLE)

    def records(self, output_format: str = "native") -> list[dict[str, Any]]:
        """The picked records in pick order: as read (``native``) or as ``messages`` /
        ``sharegpt`` / ``alpaca`` records (see :mod:`kmq.export`)."""
        check_output_format(output_format)
        if not isinstance(self.pool, LoadedPool):
            raise KmqError(
                f"a streaming run keeps no records in memory; read {self.out}/selected-*"
            )
        picked = [self.pool.examples[i] for i in self.result.indices]
        if output_format == "native":
            return [dict(example.fields) for example in picked]
        return [to_record(example, output_format) for example in picked]

    def to_dataset(self, output_format: str = "native") -> Any:
        """The picks as a ``datasets.Dataset``, in pick order: for a Dataset input and
        ``native``, ``dataset.select(run.rows)`` (its features kept); else built from
        :meth:`records`."""
        datasets = require("datasets")
        data = self.pool.data if isinstance(self.pool, LoadedPool) else None
        if output_format == "native" and isinstance(data, datasets.Dataset):
            return data.select(self.rows)
        return datasets.Dataset.from_list(self.records(output_format))


class Timer:
    """Named wall-clock stages."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


def write_table(
    path: Path, pool: LoadedPool, result: SelectionResult, quality: np.ndarray | None
) -> None:
    """One row per pick: pick order, input row, id, cluster, source, quality, score, reason."""
    idx = result.indices
    write_selection_table(
        path,
        result,
        quality,
        rows=np.array([pool.examples[i].row for i in idx], dtype=np.int64),
        ids=[pool.examples[i].id for i in idx],
        sources=[pool.examples[i].source for i in idx],
    )


def write_selection_table(
    path: Path,
    result: SelectionResult,
    quality: np.ndarray | None,
    *,
    rows: np.ndarray,
    ids: list[str],
    sources: list[str | None],
) -> None:
    """:func:`write_table` given the input row, id and source of every pick (in pick order)."""
    idx = result.indices
    picked_quality = quality[idx] if quality is not None else np.full(len(idx), np.nan)
    table = pa.table(
        {
            "pick_order": np.arange(len(idx), dtype=np.int64),
            "index": np.asarray(rows, dtype=np.int64),
            "id": ids,
            "cluster": (
                result.labels[idx] if result.labels is not None else np.full(len(idx), -1)
            ).astype(np.int64),
            "source": sources,
            "quality": picked_quality.astype(np.float64),
            f"{result.score_name}_score": result.scores,
            "reason": result.reasons,
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_dedup(path: Path, dedup: DedupResult, rows: np.ndarray, ids: list[str]) -> None:
    """One line per near-duplicate removed: its input row and id, its kept twin's, the cosine
    (``rows`` and ``ids``: the input row and id of every pool row)."""
    lines = []
    for row, twin, sim in zip(dedup.removed, dedup.twin, dedup.similarity, strict=True):
        record = {
            "index": int(rows[row]),
            "id": ids[row],
            "twin_index": int(rows[twin]),
            "twin_id": ids[twin],
            "similarity": round(float(sim), 6),
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def write_clusters(path: Path, fitted: Clustering, distances: np.ndarray | None = None) -> None:
    """Labels of every pool row and the centroids (``np.load(path)["labels"|"centroids"]``);
    the streaming path adds each row's squared L2 ``distances`` to its centre."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        if distances is None:
            np.savez(fh, labels=fitted.labels_, centroids=fitted.centroids_)
        else:
            np.savez(fh, labels=fitted.labels_, centroids=fitted.centroids_, distances=distances)


def source_counts(pool: LoadedPool, rows: np.ndarray | None = None) -> dict[str, int] | None:
    sources = [ex.source for ex in pool.examples]
    if all(s is None for s in sources):
        return None
    picked = sources if rows is None else [sources[i] for i in rows]
    return dict(sorted(Counter(s if s is not None else "(none)" for s in picked).items()))


def entropy(counts: dict[str, int]) -> float:
    """Shannon entropy (nats) of a count distribution."""
    p = np.array(list(counts.values()), dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


@dataclass
class PoolSummary:
    """What the manifest says of the input: where it is, what it held, its sources (rows per
    source in the pool and in the selection; None when no row has one)."""

    input: dict[str, Any]  # path, sha256, kind, compressed, format
    records: int
    valid: int
    rejected: int
    sources: dict[str, int] | None
    selected_sources: dict[str, int] | None


def build_manifest(
    config: SelectConfig,
    pool: PoolSummary,
    result: SelectionResult,
    fitted: Clustering | None,
    embedding: dict[str, Any] | None,
    quality_info: dict[str, Any] | None,
    excluded: dict[str, int | None],
    timer: Timer,
    rows_written: str | list[str],
    streaming: dict[str, Any] | None = None,
    checks: dict[str, Any] | None = None,
) -> Manifest:
    """The run's :class:`Manifest`; ``rows_written`` names the selected-rows file(s),
    ``streaming`` (only in streaming runs) how the pool was streamed, ``checks`` the rejects
    and repairs."""
    pool_sources = pool.sources
    picked_sources = pool.selected_sources
    encoder = config.encoder if isinstance(config.encoder, str) else config.encoder.name
    config_dict = asdict(replace(config, encoder=encoder, input=input_label(config.input)))
    clusters = None
    if fitted is not None:
        clusters = {
            "k": fitted.k,
            "inertia": fitted.inertia_,
            "silhouette": {str(k): s for k, s in (result.silhouette or {}).items()} or None,
            "pool": fitted.sizes_.tolist(),
            "quota": None if result.quotas is None else result.quotas.tolist(),
            "selected": np.bincount(fitted.labels_[result.indices], minlength=fitted.k).tolist(),
        }
    return Manifest(
        tool="kmq",
        version=__version__,
        python=platform.python_version(),
        config=config_dict,
        seed=config.seed,
        input=pool.input,
        counts={
            "records": pool.records,
            "valid": pool.valid,
            "rejected": pool.rejected,
            **excluded,
            "budget": result.budget,
            "selected": len(result),
            "shortfall": result.shortfall,
        },
        method=result.method,
        score_name=f"{result.score_name}_score",
        notes=result.notes,
        embedding=embedding,
        quality=quality_info,
        clusters=clusters,
        sources=None
        if pool_sources is None
        else {
            "pool": pool_sources,
            "selected": picked_sources,
            "entropy_pool": entropy(pool_sources),
            "entropy_selected": entropy(picked_sources or {}),
        },
        timings_s=timer.seconds,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        outputs={
            "clusters": CLUSTERS if fitted is not None else None,
            "rows": rows_written,
            "table": TABLE,
            "rejects": REJECTS if pool.rejected else None,
            "dedup": DEDUP if config.dedup is not None else None,
            "duplicates": None if config.keep_duplicates else DUPLICATES,
        },
        streaming=streaming,
        checks=checks,
    )
