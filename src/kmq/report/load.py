"""What a report shows, read from a ``kmq select`` output folder or a ``kmq iterate`` run
folder (through :class:`~kmq.outputs.Manifest` and the run's state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from kmq.errors import KmqError
from kmq.formats import FieldMap, LoadedPool, load_pool
from kmq.loop import IterativeSelection, source_weights
from kmq.outputs import CLUSTERS, TABLE, Manifest
from kmq.reweight import uniform
from kmq.selectors import CLUSTERED


@dataclass
class Picks:
    """The selected rows in pick order: the cluster of each (-1: none) and, where known, the
    pool position, source and quality of each."""

    clusters: np.ndarray
    positions: np.ndarray | None = None
    sources: list[str] | None = None
    quality: np.ndarray | None = None


@dataclass
class Rounds:
    """An iterative run's rounds: weights before round 1 and after each reweighted round."""

    weights: np.ndarray  # (1 + rounds reweighted, k)
    source_weights: dict[str, list[float]] | None  # per source, the same stages
    feedback: list[np.ndarray]  # finite feedback scores of each scored round
    entries: list[dict[str, Any]]  # IterativeSelection.state()["rounds"]
    scorer: str


@dataclass
class Selection:
    """Everything a report of a select folder or an iterate run shows."""

    summary: list[tuple[str, str]]
    timings: dict[str, float]
    picks: Picks
    pool: LoadedPool | None
    k: int | None = None
    silhouette: dict[str, float] | None = None
    sizes: np.ndarray | None = None  # pool rows per cluster
    quotas: np.ndarray | None = None
    labels: np.ndarray | None = None  # cluster of every pool row
    centroids: np.ndarray | None = None
    pool_sources: dict[str, int] | None = None
    quality_summary: dict[str, Any] | None = None  # the scorer's pool summary (manifest)
    statistics: dict[str, Any] | None = None  # tokens, turns, lengths (manifest)
    rounds: Rounds | None = None
    notes: list[str] = field(default_factory=list)  # the run's own notes
    caveats: list[str] = field(default_factory=list)  # what this report could not show


def load_select(folder: Path, centroids: np.ndarray | None) -> Selection:
    """A ``kmq select`` output folder: manifest, selection table, clusters.npz, the input."""
    manifest = Manifest.read(folder)
    pool, caveats = read_pool(manifest.input["path"], manifest.config, manifest.input)
    clusters = manifest.clusters
    data = Selection(
        summary=select_summary(manifest),
        timings=dict(manifest.timings_s),
        picks=read_picks(folder / TABLE, pool),
        pool=pool,
        pool_sources=(manifest.sources or {}).get("pool"),
        quality_summary=manifest.quality,
        statistics=manifest.statistics,
        notes=list(manifest.notes),
        caveats=caveats,
    )
    if clusters:
        data.k = int(clusters["k"])
        data.silhouette = clusters.get("silhouette")
        data.sizes = np.asarray(clusters["pool"], dtype=np.int64)
        data.quotas = None if clusters.get("quota") is None else np.asarray(clusters["quota"])
        add_cluster_arrays(data, folder / CLUSTERS, centroids)
    return data


def load_iterate(folder: Path, centroids: np.ndarray | None) -> Selection:
    """A ``kmq iterate`` run folder: its state, clusters.npz, each round's files, the input."""
    loop = IterativeSelection(folder)
    state = loop.state()
    prepare = state["prepare"]
    if prepare is None:
        raise KmqError(f"{folder}: the run is not prepared yet (no prepare.json): nothing to show")
    config = state["config"]
    pool, caveats = read_pool(config["pool"]["input"], config["pool"], prepare)
    labels = loop.labels
    positions = picked_positions(loop)
    final = folder / "final" / TABLE
    picks = read_picks(final, pool) if final.exists() else pool_picks(positions, labels, pool)
    k = int(prepare["k"])
    data = Selection(
        summary=iterate_summary(state, pool, len(positions)),
        timings=iterate_timings(loop, state),
        picks=picks,
        pool=pool,
        k=k,
        silhouette=prepare.get("silhouette"),
        sizes=np.asarray(prepare["sizes"], dtype=np.int64),
        quotas=summed_quotas(state["rounds"]),
        pool_sources=pool_source_counts(prepare.get("cluster_sources")),
        rounds=read_rounds(loop, state, k),
        caveats=caveats,
    )
    add_cluster_arrays(data, folder / CLUSTERS, centroids)
    return data


def read_pool(
    path: str, config: dict[str, Any], fingerprint: dict[str, Any]
) -> tuple[LoadedPool | None, list[str]]:
    """The input as it was read for the selection, or None and why (moved, changed)."""
    try:
        pool = load_pool(
            path,
            fields=FieldMap(**config.get("fields") or {}),
            format=config.get("format"),
            on_invalid=config.get("on_invalid", "error"),
            quality_field=config.get("quality_field"),
        )
    except (KmqError, OSError) as exc:
        return None, [
            f"the input could not be read ({exc}): no distinctive terms, labels or example "
            "prompts, and pool quality is missing"
        ]
    if pool.sha256 != fingerprint.get("sha256"):
        return None, [
            f"{path} changed since the selection (its sha256 differs): its texts are not used, "
            "so there are no distinctive terms, labels or example prompts"
        ]
    return pool, []


def read_picks(path: Path, pool: LoadedPool | None) -> Picks:
    """The selection table: cluster, source and quality of each pick, pool positions via the
    input row of each."""
    table = pq.read_table(path)
    columns = set(table.column_names)
    picks = Picks(clusters=np.asarray(table.column("cluster").to_numpy(), dtype=np.int64))
    if "quality" in columns:
        quality = np.asarray(table.column("quality").to_numpy(), dtype=np.float64)
        picks.quality = None if np.isnan(quality).all() else quality
    sources = table.column("source").to_pylist() if "source" in columns else []
    if any(s is not None for s in sources):
        picks.sources = [s if s is not None else "(none)" for s in sources]
    if pool is not None:
        position = {ex.row: i for i, ex in enumerate(pool.examples)}
        rows = table.column("index").to_pylist()
        picks.positions = np.array([position[r] for r in rows], dtype=np.int64)
    return picks


def pool_picks(positions: np.ndarray, labels: np.ndarray, pool: LoadedPool | None) -> Picks:
    """Picks of an unfinished run: clusters from the labels, the rest from the pool."""
    picks = Picks(clusters=labels[positions])
    if pool is None:
        return picks
    picks.positions = positions
    sources = [pool.examples[i].source for i in positions]
    if any(s is not None for s in sources):
        picks.sources = [s if s is not None else "(none)" for s in sources]
    if pool.quality is not None:
        picks.quality = pool.quality[positions]
    return picks


def add_cluster_arrays(data: Selection, path: Path, centroids: np.ndarray | None) -> None:
    """Labels and centroids from ``clusters.npz`` (``centroids`` given win)."""
    if path.exists():
        with np.load(path) as arrays:
            data.labels = arrays["labels"] if "labels" in arrays.files else None
            data.centroids = arrays["centroids"] if "centroids" in arrays.files else None
    else:
        data.caveats.append(
            f"no {CLUSTERS} in the folder: the cluster map needs centroids, and the distinctive "
            "terms come from the selected rows only"
        )
    pool_rows = len(data.pool.examples) if data.pool is not None else None
    if data.labels is not None and pool_rows is not None and len(data.labels) != pool_rows:
        data.caveats.append(
            f"{CLUSTERS} labels {len(data.labels)} rows, the input has {pool_rows}: "
            "the labels are not used"
        )
        data.labels = None
    if centroids is not None:
        centroids = np.asarray(centroids, dtype=np.float64)
        if centroids.ndim != 2 or len(centroids) != data.k:
            raise KmqError(
                f"centroids must be a k × d array with k={data.k} rows, got shape {centroids.shape}"
            )
        data.centroids = centroids


def picked_positions(loop: IterativeSelection) -> np.ndarray:
    """Pool positions picked in every round whose selection is done, in pick order."""
    rounds = [r for r in loop.dir.rounds_started() if loop.dir.done("select", r)]
    parts = [loop.picked(r) for r in rounds]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def summed_quotas(entries: list[dict[str, Any]]) -> np.ndarray | None:
    quotas = [np.asarray(e["quotas"]) for e in entries if e.get("quotas") is not None]
    return np.sum(quotas, axis=0) if quotas else None


def pool_source_counts(cluster_sources: dict[str, list[int]] | None) -> dict[str, int] | None:
    if not cluster_sources:
        return None
    return {source: int(sum(counts)) for source, counts in cluster_sources.items()}


def read_rounds(loop: IterativeSelection, state: dict[str, Any], k: int) -> Rounds:
    """Weights per stage, per-source weights and feedback scores of every round so far."""
    entries = state["rounds"]
    after = [e["weights_after"] for e in entries if "weights_after" in e]
    weights = np.array([uniform(k).tolist(), *after], dtype=np.float64)
    cluster_sources = (state["prepare"] or {}).get("cluster_sources")
    by_source = None
    if cluster_sources:
        stages = [source_weights(w.tolist(), cluster_sources) for w in weights]
        by_source = {s: [stage[s] for stage in stages] for s in cluster_sources}
    feedback = []
    for entry in entries:
        if "score" in entry["done"]:
            rows = loop.dir.read_jsonl("feedback.jsonl", entry["round"])
            scores = np.array([np.nan if r["score"] is None else r["score"] for r in rows])
            feedback.append(scores[np.isfinite(scores)])
    return Rounds(weights, by_source, feedback, entries, str(state["config"]["feedback"]))


def select_summary(manifest: Manifest) -> list[tuple[str, str]]:
    counts, config, source = manifest.counts, manifest.config, manifest.input
    rejects = manifest.outputs.get("rejects")
    rows = [
        ("input", input_text(source)),
        ("method", method_text(manifest.method, config)),
        ("rows", f"{counts['valid']:,} valid of {counts['records']:,} read"),
        ("rejected", f"{counts['rejected']:,}" + (f" (in {rejects})" if rejects else "")),
        ("excluded", f"{counts['excluded']:,}"),
        ("budget", budget_text(counts["budget"], config["budget"])),
        ("selected", selected_text(counts["selected"], counts.get("shortfall", 0))),
        ("k", k_text(manifest.clusters, config)),
        ("seed", str(manifest.seed)),
        ("embedding", embedding_text(manifest.embedding)),
        ("quality", quality_text(manifest.quality)),
    ]
    if manifest.peak_rss_mb is not None:
        rows.append(("peak memory", f"{manifest.peak_rss_mb:,.0f} MB"))
    rows.append(("kmq", manifest.version))
    return rows


def input_text(source: dict[str, Any]) -> str:
    packed = ", gzip" if source.get("compressed") else ""
    return (
        f"{source['path']} ({source.get('format')}, {source.get('kind')}{packed}); "
        f"sha256 {str(source.get('sha256'))[:12]}…"
    )


def method_text(method: str, config: dict[str, Any]) -> str:
    parts = [f"allocation {config.get('allocation')}"] if method in CLUSTERED else []
    if method == "kmq":
        parts.append(
            f"quality weighting {config.get('quality_weighting')}, "
            f"temperature {config.get('temperature')}"
        )
    return f"{method} ({'; '.join(parts)})" if parts else method


def budget_text(budget: int, asked: int | float) -> str:
    share = f" ({asked} of the valid rows)" if isinstance(asked, float) else ""
    return f"{budget:,} rows{share}"


def selected_text(selected: int, shortfall: int) -> str:
    return f"{selected:,}" + (f" ({shortfall:,} under budget)" if shortfall else "")


def k_text(clusters: dict[str, Any] | None, config: dict[str, Any]) -> str:
    if not clusters:
        return "no clustering"
    how = "chosen by silhouette" if config.get("k") == "auto" else "given"
    return f"{clusters['k']:,} ({how})"


def embedding_text(embedding: dict[str, Any] | None) -> str:
    if not embedding:
        return "none"
    return f"{embedding['encoder']} ({embedding['view']} view, {embedding['dim']} dims)"


def quality_text(quality: dict[str, Any] | None) -> str:
    if not quality:
        return "none"
    name = quality.get("column") if quality.get("scorer") == "column" else quality.get("scorer")
    return f"{quality.get('scorer')}: {name} ({quality.get('direction')})"


def iterate_summary(
    state: dict[str, Any], pool: LoadedPool | None, n_picked: int
) -> list[tuple[str, str]]:
    config, prepare = state["config"], state["prepare"]
    select = config["pool"]
    done = sum("reweight" in e["done"] for e in state["rounds"])
    rejected = f"{len(pool.rejects):,}" if pool else "unknown (the input could not be read)"
    quality = select.get("quality") or "none"
    if select.get("quality_field"):
        quality = f"column {select['quality_field']}"
    return [
        ("input", f"{select['input']}; sha256 {prepare['sha256'][:12]}…"),
        (
            "method",
            f"iterative kMQ (quality weighting {select.get('quality_weighting')}, temperature "
            f"{select.get('temperature')}); quotas ∝ the cluster weights of each round",
        ),
        ("rounds", f"{config['rounds']} of {prepare['round_sizes']} rows; {done} done"),
        (
            "weight update",
            f"rule {config['rule']} (positive {config['positive']}, temperature "
            f"{config['reweight_temperature']}, floor {config['floor']})",
        ),
        ("feedback", str(config["feedback"])),
        ("trainer", "external" if config.get("external") else trainer_text(config)),
        ("rows", f"{prepare['rows']:,} valid"),
        ("rejected", rejected),
        ("budget", budget_text(prepare["budget"], select["budget"])),
        ("selected", f"{n_picked:,}" + ("" if state["finished"] else " so far")),
        ("k", k_text(prepare, select)),
        ("seed", str(select["seed"])),
        ("embedding", f"{select.get('encoder')} ({select.get('view')} view)"),
        ("quality", quality),
        ("finished", "yes" if state["finished"] else "no"),
    ]


def trainer_text(config: dict[str, Any]) -> str:
    options = config.get("trainer_options") or {}
    model = f" {options['model']}" if options.get("model") else ""
    return f"built-in TRL SFT{model} ({options.get('mode', 'continue')} mode)"


def iterate_timings(loop: IterativeSelection, state: dict[str, Any]) -> dict[str, float]:
    """Seconds of the prepare step, then of each round step summed over the rounds."""
    timings = {"prepare": float(loop.dir.marker("prepare").get("seconds") or 0.0)}
    for entry in state["rounds"]:
        for step, seconds in entry["seconds"].items():
            timings[step] = timings.get(step, 0.0) + float(seconds or 0.0)
    return timings
