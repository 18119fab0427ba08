"""The HTML report of a selection, an iterative run or a benchmark results folder.

:func:`write_report` writes one self-contained file: plots are inline PNGs, CSS and JS are
inline, nothing is fetched from the network, so it opens in any browser, offline. Every
section has a stable id:

- ``summary``: input, method, budget, k and silhouette, seed, timings, rejects, notes;
- ``composition``: pool vs selection per source and per cluster;
- ``cluster-map``: PCA of the centroids (size = cluster size, colour = share selected);
- ``clusters``: a sortable table of the largest clusters with distinctive terms (c-TF-IDF),
  an automatic label and example prompts;
- ``quality``: pool vs selected quality distributions;
- ``rounds`` (iterative runs): cluster and source weights per round, feedback per round, and
  the clusters boosted or starved most;
- ``benchmarks`` (a results folder): each ``*.md`` rendered and each ``*.png`` embedded.

What the folder lacks (an input file that moved, no ``clusters.npz``, no quality) is said in the
report instead of failing.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from kmq._imports import require
from kmq.atomic import write_text
from kmq.errors import KmqError
from kmq.formats import FieldMap, LoadedPool, load_pool
from kmq.loop import IterativeSelection, source_weights
from kmq.outputs import CLUSTERS, MANIFEST, TABLE, Manifest, entropy
from kmq.reweight import cluster_means, uniform
from kmq.selectors import CLUSTERED

REPORT = "report.html"
MAX_CLUSTERS = 300  # rows of the cluster table (the largest clusters)
EXAMPLES = 3  # example prompts per cluster
PROMPT_CHARS = 160  # an example prompt is cut here
TERMS = 8  # distinctive terms per cluster
LABEL_TERMS = 3  # terms in the automatic label
TERM_TEXT_CHARS = 2000  # characters of each text that count for the terms
MOVERS = 10  # rows of the boosted / starved tables
HIGHLIGHT = 5  # clusters drawn in colour on the weight plot (each way)
ANNOTATE = 15  # largest clusters numbered on the map
DPI = 100

TOKEN = re.compile(r"[^\W\d_]{3,}")
_STOPWORDS = """
    about above after again against all also among and another any are around because been
    before being below between both but can cannot could did does doing done down during each
    either else even ever every few for from further get gets given had has have having her here
    hers herself him himself his how however into its itself just least less let like made make
    many may might more most much must myself neither nor not now off once one only onto other
    others our ours ourselves out over own per same shall she should since some such than that
    the their theirs them themselves then there these they this those though through thus too
    under until upon use used using very was way well were what when where whether which while
    who whom whose why will with within without would yet you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORDS.split())


# -- the entry point ---------------------------------------------------------------------------


def write_report(
    path: str | Path,
    out: str | Path | None = None,
    *,
    centroids: np.ndarray | None = None,
    max_clusters: int = MAX_CLUSTERS,
) -> Path:
    """Write the HTML report of ``path`` to ``out`` (default ``path/report.html``).

    ``path`` is a ``kmq select`` output folder, a ``kmq iterate`` run folder, or a folder of
    benchmark results (``*.md`` tables and ``*.png`` plots). ``centroids`` (k × d) replace the
    ones in ``clusters.npz`` for the cluster map; the cluster table lists the ``max_clusters``
    largest clusters. Returns the path written.
    """
    folder = Path(path)
    if max_clusters < 1:
        raise KmqError(f"max_clusters must be >= 1, got {max_clusters}")
    if (folder / "config.json").exists():
        data = load_iterate(folder, centroids)
        title, sections = f"kmq iterate: {folder.name}", selection_sections(data, max_clusters)
    elif (folder / MANIFEST).exists():
        data = load_select(folder, centroids)
        title, sections = f"kmq select: {folder.name}", selection_sections(data, max_clusters)
    elif any(folder.glob("*.md")) or any(folder.glob("*.png")):
        title, sections = f"kmq benchmarks: {folder.name}", [benchmark_section(folder)]
    else:
        raise KmqError(
            f"{folder} is neither a kmq select output folder ({MANIFEST}), a kmq iterate run "
            "folder (config.json) nor a benchmark results folder (*.md, *.png)"
        )
    target = Path(out) if out is not None else folder / REPORT
    write_text(target, page(title, sections))
    return target


# -- what a selection report shows --------------------------------------------------------------


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


# -- summary facts ------------------------------------------------------------------------------


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


# -- per-cluster facts --------------------------------------------------------------------------


@dataclass
class ClusterFacts:
    """Per cluster: rows picked, mean picked quality, distinctive terms, example prompts."""

    picked: np.ndarray
    quality: np.ndarray
    terms: list[list[str]] | None
    examples: list[list[str]]

    def label(self, j: int) -> str:
        return " · ".join(self.terms[j][:LABEL_TERMS]) if self.terms else ""


def cluster_facts(data: Selection, k: int) -> ClusterFacts:
    picks = data.picks
    inside = picks.clusters >= 0
    picked = np.bincount(picks.clusters[inside], minlength=k)
    quality = np.full(k, np.nan)
    if picks.quality is not None:
        quality, _ = cluster_means(picks.clusters[inside], picks.quality[inside], k)
    if data.pool is None:
        return ClusterFacts(picked, quality, None, [[] for _ in range(k)])
    texts = [ex.text("user") for ex in data.pool.examples]
    if data.labels is not None:
        terms = distinctive_terms(texts, data.labels, k)
    elif picks.positions is not None:
        terms = distinctive_terms([texts[i] for i in picks.positions], picks.clusters, k)
    else:
        terms = None
    return ClusterFacts(picked, quality, terms, example_prompts(texts, picks, data.labels, k))


def distinctive_terms(texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """The ``TERMS`` words most particular to each cluster by class-based TF-IDF (c-TF-IDF):
    tf of the word in the cluster × log(1 + average words per cluster / the word's count in
    all texts). Stop words and words under 3 letters do not count."""
    vocab: dict[str, int] = {}
    ids, owners = [], []
    for text, label in zip(texts, labels, strict=True):
        words = [w for w in TOKEN.findall(text[:TERM_TEXT_CHARS].lower()) if w not in STOPWORDS]
        if label >= 0 and words:
            ids.append(np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.int64))
            owners.append(np.full(len(words), label, dtype=np.int64))
    if not ids:
        return [[] for _ in range(k)]
    n_terms = len(vocab)
    pairs, counts = np.unique(
        np.concatenate(owners) * n_terms + np.concatenate(ids), return_counts=True
    )
    cluster, term = np.divmod(pairs, n_terms)
    words_in = np.bincount(cluster, weights=counts, minlength=k)
    frequency = np.bincount(term, weights=counts, minlength=n_terms)
    average = counts.sum() / np.count_nonzero(words_in)
    score = counts / words_in[cluster] * np.log1p(average / frequency[term])
    order = np.lexsort((-score, cluster))
    starts = np.searchsorted(cluster[order], np.arange(k))
    rank = np.arange(len(order)) - starts[cluster[order]]
    names = list(vocab)
    out: list[list[str]] = [[] for _ in range(k)]
    for i in order[rank < 2 * TERMS]:
        words = out[cluster[i]]
        word = names[term[i]]
        if len(words) < TERMS and not any(same_stem(word, w) for w in words):
            words.append(word)
    return out


def same_stem(a: str, b: str) -> bool:
    """A crude stemmer: ``reverse``/``reversed``, ``candy``/``candies`` count as one word."""
    common = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return common >= 4 and common >= min(len(a), len(b)) - 2


def example_prompts(
    texts: Sequence[str], picks: Picks, labels: np.ndarray | None, k: int
) -> list[list[str]]:
    """Up to ``EXAMPLES`` prompts per cluster, selected rows first, shortened."""
    out: list[list[str]] = [[] for _ in range(k)]
    candidates: list[Iterable[tuple[int, int]]] = []
    if picks.positions is not None:
        candidates.append(zip(picks.positions.tolist(), picks.clusters.tolist(), strict=True))
    if labels is not None:
        candidates.append(enumerate(labels.tolist()))
    seen: set[int] = set()
    for rows in candidates:
        for position, j in rows:
            if 0 <= j < k and len(out[j]) < EXAMPLES and position not in seen:
                seen.add(position)
                out[j].append(shorten(texts[position]))
    return out


def shorten(text: str, limit: int = PROMPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# -- HTML building blocks -----------------------------------------------------------------------


class Markup(str):
    """HTML that is inserted as is (everything else is escaped)."""


@dataclass(frozen=True)
class Num:
    """A table cell holding a number: shown as ``text``, sorted by ``value``."""

    value: float
    text: str


Cell = str | Num


@dataclass
class Section:
    id: str
    title: str
    body: list[str]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: float | int | None, spec: str = ",") -> Num:
    """A number cell; NaN and None show as an empty cell (sorted last)."""
    if value is None or not np.isfinite(value):
        return Num(float("nan"), "")
    return Num(float(value), format(value, spec))


def cell_html(cell: Cell) -> str:
    if isinstance(cell, Num):
        value = "" if np.isnan(cell.value) else repr(cell.value)
        return f'<td class="num" data-v="{value}">{esc(cell.text)}</td>'
    if isinstance(cell, Markup):
        return f"<td>{cell}</td>"
    return f"<td>{esc(cell)}</td>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    sortable: bool = False,
    caption: str | None = None,
    css: str = "",
) -> Markup:
    classes = " ".join(c for c in (css, "sortable" if sortable else "") if c)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell_html(c) for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{classes}"' if classes else ""
    return Markup(f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def key_values(rows: Iterable[tuple[str, str]]) -> Markup:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return Markup(f'<table class="kv"><tbody>{body}</tbody></table>')


def note(text: str) -> Markup:
    return Markup(f'<p class="note">{esc(text)}</p>')


def bullets(items: Iterable[str], css: str = "") -> Markup:
    klass = f' class="{css}"' if css else ""
    return Markup(f"<ul{klass}>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")


def plot(draw: Callable[[Any], None], alt: str, size: tuple[float, float] = (9.0, 4.0)) -> Markup:
    """``draw(figure)`` as an inline PNG (matplotlib without pyplot: no global state)."""
    try:
        figure = require("matplotlib.figure")
    except KmqError as exc:
        return note(f"{alt}: {exc}")
    fig = figure.Figure(figsize=size, layout="constrained")
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Markup(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def plain(text: str) -> str:
    """``text`` for a matplotlib label: ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def page(title: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{"".join(s.body)}</section>' for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header><main>{body}</main>"
        f"<script>{SORT_JS}</script></body></html>\n"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
background:#fafafa}
header{background:#1f3b57;color:#fff;padding:12px 24px}
header h1{margin:0 0 6px;font-size:20px}
nav a{color:#cfe3f7;margin-right:16px;text-decoration:none}
main{max-width:1200px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px 20px 16px;
margin:16px 0}
h2{font-size:17px;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-order=asc]::after{content:" \\25B2"}
table.sortable th[data-order=desc]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:110px}
table.kv td{min-width:320px;max-width:640px}
.row{display:flex;flex-wrap:wrap;gap:0 40px;align-items:flex-start}
table.clusters td:nth-child(2){min-width:140px}
table.clusters td:nth-last-child(2){min-width:180px}
table.clusters td:last-child{min-width:440px}
table.clusters ol{margin:0;padding-left:18px;color:#555;font-size:12px}
caption{caption-side:bottom;text-align:left;color:#666;font-size:12px;padding-top:4px}
tbody tr:nth-child(even){background:#fafbfc}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #f0b400;padding:4px 8px}
pre{background:#f4f4f4;padding:8px;overflow-x:auto}
"""

SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? "asc" : "desc";
    function key(row) {
      var cell = row.cells[col];
      var text = cell.textContent.trim();
      if (cell.dataset.v === undefined && !/^[-+]?[0-9][0-9,]*[.]?[0-9]*/.test(text)) {
        return text.toLowerCase();
      }
      var v = parseFloat(cell.dataset.v === undefined ? text.replace(/,/g, "") : cell.dataset.v);
      return isNaN(v) ? (asc ? Infinity : -Infinity) : v;
    }
    Array.from(body.rows)
      .sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      })
      .forEach(function (row) { body.appendChild(row); });
  });
});
"""


# -- the sections of a selection report ---------------------------------------------------------


def selection_sections(data: Selection, max_clusters: int) -> list[Section]:
    facts = cluster_facts(data, data.k) if data.k else None
    sections = [
        summary_section(data),
        composition_section(data, facts),
        cluster_map_section(data, facts),
        clusters_section(data, facts, max_clusters),
        quality_section(data),
    ]
    if data.rounds is not None:
        sections.append(rounds_section(data, data.rounds, facts))
    return sections


def summary_section(data: Selection) -> Section:
    parts = [f"<div><h3>Run</h3>{key_values(data.summary)}</div>"]
    if data.timings:
        rows = [(stage, num(s, ",.2f")) for stage, s in data.timings.items()]
        rows.append(("total", num(sum(data.timings.values()), ",.2f")))
        parts.append(f"<div><h3>Timings</h3>{table(('stage', 'seconds'), rows)}</div>")
    if data.silhouette:
        rows = [
            (f"{int(kk):,}" + (" (chosen)" if int(kk) == data.k else ""), num(s, ".4f"))
            for kk, s in sorted(data.silhouette.items(), key=lambda kv: int(kv[0]))
        ]
        parts.append(f"<div><h3>Silhouette per k</h3>{table(('k', 'silhouette'), rows)}</div>")
    body = [f'<div class="row">{"".join(parts)}</div>']
    if data.notes:
        body += ["<h3>Notes</h3>", bullets(data.notes)]
    if data.caveats:
        body += ["<h3>About this report</h3>", bullets(data.caveats, css="note")]
    return Section("summary", "Summary", body)


def composition_section(data: Selection, facts: ClusterFacts | None) -> Section:
    body: list[str] = []
    picked_sources = Counter(data.picks.sources or [])
    if data.pool_sources:
        body += source_composition(data.pool_sources, dict(picked_sources))
    else:
        body.append(note("the pool has no source field: no per-source composition"))
    if facts is not None and data.sizes is not None:
        body += ["<h3>Per cluster</h3>", cluster_composition_plot(data.sizes, facts.picked)]
    else:
        body.append(note("this selection has no clusters: no per-cluster composition"))
    return Section("composition", "Composition: pool vs selection", body)


def source_composition(pool: dict[str, int], picked: dict[str, int]) -> list[str]:
    n_pool, n_picked = sum(pool.values()) or 1, sum(picked.values()) or 1
    order = sorted(pool, key=lambda s: -pool[s])
    rows = [
        (
            s,
            num(pool[s]),
            num(100 * pool[s] / n_pool, ".1f"),
            num(picked.get(s, 0)),
            num(100 * picked.get(s, 0) / n_picked, ".1f"),
        )
        for s in order
    ]
    caption = None
    if picked:
        caption = (
            f"source entropy: pool {entropy(pool):.3f}, selection {entropy(picked):.3f} nats "
            f"(max ln {len(pool)} = {np.log(len(pool)):.3f})"
        )

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        y = np.arange(len(order))
        ax.barh(y - 0.2, [100 * pool[s] / n_pool for s in order], 0.4, label="pool", color="#9aa")
        share = [100 * picked.get(s, 0) / n_picked for s in order]
        ax.barh(y + 0.2, share, 0.4, label="selection", color="#1f77b4")
        ax.set_yticks(y, [plain(s) for s in order])
        ax.invert_yaxis()
        ax.set_xlabel("% of rows")
        ax.legend(loc="lower right")

    height = 1.2 + 0.35 * len(order)
    return [
        "<h3>Per source</h3>",
        table(("source", "pool", "pool %", "selected", "selected %"), rows, caption=caption),
        plot(draw, "pool vs selection per source", (8.0, height)),
    ]


def cluster_composition_plot(sizes: np.ndarray, picked: np.ndarray) -> Markup:
    order = np.argsort(-sizes, kind="stable")
    pool_share = 100 * sizes[order] / max(sizes.sum(), 1)
    picked_share = 100 * picked[order] / max(picked.sum(), 1)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        x = np.arange(len(order))
        ax.bar(x, pool_share, width=1.0, color="#c5cccc", label="pool", linewidth=0)
        ax.step(x, picked_share, where="mid", color="#1f77b4", linewidth=1.5, label="selection")
        ax.set_xlabel(f"cluster, by pool size (largest first; {len(x):,} clusters)")
        ax.set_ylabel("% of rows")
        ax.set_xlim(-1, len(x))
        ax.legend()

    return plot(draw, "pool vs selection per cluster")


def cluster_map_section(data: Selection, facts: ClusterFacts | None) -> Section:
    title = "Cluster map"
    if facts is None or data.sizes is None:
        return Section("cluster-map", title, [note("this selection has no clusters")])
    if data.centroids is None:
        return Section(
            "cluster-map",
            title,
            [note(f"no centroids: the folder has no {CLUSTERS} (pass centroids= to add them)")],
        )
    if len(data.centroids) < 2:
        return Section("cluster-map", title, [note("a map needs at least 2 clusters")])
    xy, explained = pca_2d(data.centroids)
    share = facts.picked / np.maximum(data.sizes, 1)
    sizes = data.sizes

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        k = len(sizes)
        area = 4 + min(400.0, 4000 / np.sqrt(k)) * sizes / max(sizes.max(), 1)
        top = float(np.quantile(share, 0.98)) or 1.0
        points = ax.scatter(
            xy[:, 0], xy[:, 1], s=area, c=share, cmap="viridis", vmin=0, vmax=top, alpha=0.75
        )
        points.set_linewidth(0)
        extend = "max" if share.max() > top else "neither"
        fig.colorbar(points, ax=ax, label="share of the cluster selected", extend=extend)
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0}
        for j in np.argsort(-sizes, kind="stable")[:ANNOTATE]:
            ax.annotate(str(j), xy[j], fontsize=7, ha="center", va="center", bbox=box)
        ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)")
        ax.set_title(f"{k:,} centroids; marker area = cluster size", fontsize=10)

    caption = (
        f"PCA of the centroids; the {min(ANNOTATE, len(sizes))} largest clusters are numbered "
        "(see the cluster table)."
    )
    return Section(
        "cluster-map", title, [plot(draw, "cluster map", (9.0, 6.5)), f"<p>{esc(caption)}</p>"]
    )


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of the rows of ``x`` and their share of variance."""
    centred = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    share = variance / max(variance.sum(), np.finfo(float).tiny)
    xy = centred @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros(len(xy))])
        share = np.append(share, 0.0)
    return xy, share[:2]


def clusters_section(data: Selection, facts: ClusterFacts | None, max_clusters: int) -> Section:
    title = "Clusters"
    if facts is None or data.sizes is None:
        return Section("clusters", title, [note("this selection has no clusters")])
    body: list[str] = []
    if len(data.sizes) > max_clusters:
        body.append(
            note(f"the {max_clusters:,} largest of {len(data.sizes):,} clusters are listed")
        )
    if facts.terms is None:
        body.append(note("no distinctive terms or labels: the input texts are not available"))
    columns = cluster_columns(data, facts)
    shown = np.argsort(-data.sizes, kind="stable")[:max_clusters]
    rows = ([cell(int(j)) for _, cell in columns] for j in shown)
    body.append(table([name for name, _ in columns], rows, sortable=True, css="clusters"))
    body.append("<p>Click a column header to sort. Mean quality is over the picked rows.</p>")
    return Section("clusters", title, body)


def cluster_columns(
    data: Selection, facts: ClusterFacts
) -> list[tuple[str, Callable[[int], Cell]]]:
    """The cluster table's columns: a header and a cell maker each (columns without data left
    out)."""
    sizes, quotas = data.sizes if data.sizes is not None else facts.picked, data.quotas
    columns: list[tuple[str, Callable[[int], Cell]]] = [
        ("cluster", lambda j: num(j, "d")),
        ("label", facts.label),
        ("size", lambda j: num(int(sizes[j]))),
    ]
    if quotas is not None:
        columns.append(("quota", lambda j: num(int(quotas[j]))))
    columns += [
        ("picked", lambda j: num(int(facts.picked[j]))),
        ("picked %", lambda j: num(100 * facts.picked[j] / max(sizes[j], 1), ".1f")),
    ]
    if data.picks.quality is not None:
        columns.append(("mean quality", lambda j: num(facts.quality[j], ".3g")))
    if data.rounds is not None:
        last = data.rounds.weights[-1]
        columns.append(("final weight", lambda j: num(last[j], ".4f")))
    if facts.terms is not None:
        terms = facts.terms
        columns.append(("distinctive terms", lambda j: ", ".join(terms[j])))
    columns.append(("example prompts", lambda j: examples_html(facts.examples[j])))
    return columns


def examples_html(examples: list[str]) -> Markup:
    if not examples:
        return Markup("")
    return Markup("<ol>" + "".join(f"<li>{esc(e)}</li>" for e in examples) + "</ol>")


def quality_section(data: Selection) -> Section:
    title = "Quality"
    pool = data.pool.quality if data.pool is not None else None
    picked = data.picks.quality
    if pool is None and picked is None:
        return Section("quality", title, [note("no quality scores in this selection")])
    body: list[str] = []
    rows: list[list[Cell]] = []
    if pool is not None:
        rows.append(stats_row("pool", pool))
    elif data.quality_summary and "mean" in data.quality_summary:
        rows.append(summary_row("pool (scorer summary)", data.quality_summary))
    if picked is not None:
        rows.append(stats_row("selected", picked))
    body.append(table(("rows", "n", "mean", "p25", "median", "p75"), rows))
    if data.quality_summary:
        body.append(f"<p>Direction: {esc(data.quality_summary.get('direction'))}</p>")

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        finite = [v[np.isfinite(v)] for v in (pool, picked) if v is not None]
        bins = np.histogram_bin_edges(np.concatenate(finite), bins=40)
        if pool is not None:
            ax.hist(pool[np.isfinite(pool)], bins=bins, density=True, color="#9aa", label="pool")
        if picked is not None:
            ax.hist(
                picked[np.isfinite(picked)],
                bins=bins,
                density=True,
                histtype="step",
                linewidth=2,
                color="#1f77b4",
                label="selected",
            )
        ax.set_xlabel("quality")
        ax.set_ylabel("density")
        ax.legend()

    body.append(plot(draw, "quality, pool vs selected"))
    return Section("quality", title, body)


def stats_row(name: str, values: np.ndarray) -> list[Cell]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return [name, num(0), num(None), num(None), num(None), num(None)]
    p25, median, p75 = np.quantile(finite, [0.25, 0.5, 0.75])
    return [
        name,
        num(len(finite)),
        num(finite.mean(), ".4g"),
        num(p25, ".4g"),
        num(median, ".4g"),
        num(p75, ".4g"),
    ]


def summary_row(name: str, summary: dict[str, Any]) -> list[Cell]:
    n = summary.get("rows", 0) - summary.get("missing", 0)
    stats = [num(summary.get(key), ".4g") for key in ("mean", "p25", "median", "p75")]
    return [name, num(n), *stats]


# -- the rounds of an iterative run -------------------------------------------------------------


def rounds_section(data: Selection, rounds: Rounds, facts: ClusterFacts | None) -> Section:
    body: list[str] = [rounds_table(rounds)]
    labels: Callable[[int], str] = facts.label if facts is not None else str
    if len(rounds.weights) > 1:
        body += ["<h3>Cluster weights per round</h3>", weights_plot(rounds.weights, labels)]
    if rounds.source_weights:
        body += source_weights_part(rounds.source_weights)
    if rounds.feedback:
        body += [f"<h3>Feedback per round ({esc(rounds.scorer)})</h3>", feedback_plot(rounds)]
    if len(rounds.weights) > 1 and data.sizes is not None:
        body += movers_part(rounds.weights, data.sizes, labels)
    return Section("rounds", "Rounds", body)


def rounds_table(rounds: Rounds) -> Markup:
    steps = ("select", "train", "generate", "score", "reweight")
    scored = iter(rounds.feedback)
    rows: list[list[Cell]] = []
    for entry in rounds.entries:
        scores = next(scored) if "score" in entry["done"] else None
        seconds = entry.get("seconds") or {}
        rows.append(
            [
                num(entry["round"], "d"),
                num(entry.get("size")),
                ", ".join(entry["done"]),
                *(num(seconds.get(s), ",.1f") for s in steps),
                num(None if scores is None or not len(scores) else scores.mean(), ".4g"),
            ]
        )
    headers = ["round", "rows", "steps done", *(f"{s} s" for s in steps), "mean feedback"]
    return table(headers, rows)


def stage_names(n: int) -> list[str]:
    return ["start", *(f"after round {r}" for r in range(1, n))]


def movers(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last-over-first weight ratio per cluster, and the clusters by ratio (most boosted first)."""
    ratio = weights[-1] / np.maximum(weights[0], np.finfo(float).tiny)
    return ratio, np.argsort(-ratio, kind="stable")


def weights_plot(weights: np.ndarray, label: Callable[[int], str]) -> Markup:
    _, order = movers(weights)
    highlight = list(order[:HIGHLIGHT]) + [
        j for j in order[-HIGHLIGHT:] if j not in order[:HIGHLIGHT]
    ]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        x = np.arange(len(weights))
        ax.plot(x, weights, color="#999", alpha=max(0.05, min(0.6, 8 / weights.shape[1])), lw=0.8)
        for j in highlight:
            ax.plot(x, weights[:, j], marker="o", lw=1.6, label=f"{j}: {label(j)}"[:40])
        ax.set_yscale("log")
        ax.set_xticks(x, stage_names(len(weights)))
        ax.set_ylabel("cluster weight (log)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))

    return plot(draw, "cluster weights per round", (10.0, 4.5))


def source_weights_part(by_source: dict[str, list[float]]) -> list[str]:
    n = len(next(iter(by_source.values())))
    stages = stage_names(n)
    rows: list[list[Cell]] = [
        [s, *(num(w, ".3f") for w in values)] for s, values in by_source.items()
    ]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for source, values in by_source.items():
            ax.plot(np.arange(n), values, marker="o", label=plain(source))
        ax.set_xticks(np.arange(n), stages)
        ax.set_ylabel("weight (Σ over clusters, by row share)")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))

    return [
        "<h3>Weight by source per round</h3>",
        table(("source", *stages), rows, sortable=True),
        plot(draw, "weight by source per round"),
    ]


def feedback_plot(rounds: Rounds) -> Markup:
    names = [f"round {e['round']}" for e in rounds.entries if "score" in e["done"]]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ax.boxplot(rounds.feedback, showmeans=True)
        ax.set_xticks(np.arange(1, len(names) + 1), names)
        ax.set_ylabel("feedback score (higher = more to learn)")

    return plot(draw, "feedback score distribution per round", (8.0, 3.8))


def movers_part(weights: np.ndarray, sizes: np.ndarray, label: Callable[[int], str]) -> list[str]:
    ratio, order = movers(weights)
    n = min(MOVERS, len(order) // 2) or 1
    last = f"weight after round {len(weights) - 1}"
    headers = ("cluster", "label", "size", "weight before round 1", last, "ratio")

    def rows(clusters: Iterable[int]) -> list[list[Cell]]:
        return [
            [
                num(int(j), "d"),
                label(int(j)),
                num(int(sizes[j])),
                num(weights[0, j], ".4f"),
                num(weights[-1, j], ".4f"),
                num(ratio[j], ".2f"),
            ]
            for j in clusters
        ]

    return [
        "<h3>Boosted most</h3>",
        table(headers, rows(order[:n]), sortable=True),
        "<h3>Starved most</h3>",
        table(headers, rows(order[::-1][:n]), sortable=True),
    ]


# -- a benchmark results folder -----------------------------------------------------------------


def benchmark_section(folder: Path) -> Section:
    """Each ``*.md`` rendered, followed by the ``*.png`` of the same name; other plots last."""
    tables = sorted(folder.glob("*.md"))
    plots = sorted(folder.glob("*.png"))
    body: list[str] = []
    for md in tables:
        body.append(f'<article id="bench-{esc(md.stem)}"><h3>{esc(md.name)}</h3>')
        body.append(markdown_html(md.read_text(encoding="utf-8")))
        body += [png_html(p) for p in plots if p.stem == md.stem]
        body.append("</article>")
    stems = {md.stem for md in tables}
    for p in plots:
        if p.stem not in stems:
            body += [f"<h3>{esc(p.name)}</h3>", png_html(p)]
    return Section("benchmarks", "Benchmarks", body)


def png_html(path: Path) -> Markup:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Markup(f'<img alt="{esc(path.name)}" src="data:image/png;base64,{data}">')


def markdown_html(text: str) -> Markup:
    """A small subset of Markdown: headers, tables, fenced code, bullet lists, paragraphs."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("```"):
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines)
            )
            out.append("<pre><code>" + esc("\n".join(lines[i + 1 : end])) + "</code></pre>")
            i = end + 1
        elif line.startswith("|"):
            end = block_end(lines, i, lambda s: s.startswith("|"))
            out.append(markdown_table(lines[i:end]))
            i = end
        elif re.match(r"[-*] ", line):
            end = block_end(lines, i, lambda s: re.match(r"[-*] |\s+\S", s) is not None)
            out.append(markdown_list(lines[i:end]))
            i = end
        elif heading := re.match(r"(#{1,6})\s+(.*)", line):
            level = min(len(heading.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.strip():
            end = block_end(lines, i, is_paragraph)
            out.append("<p>" + inline(" ".join(s.strip() for s in lines[i:end])) + "</p>")
            i = end
        else:
            i += 1
    return Markup("".join(out))


def markdown_list(lines: list[str]) -> str:
    """Bullet items; an indented line continues the item above it."""
    items: list[str] = []
    for line in lines:
        if re.match(r"[-*] ", line):
            items.append(line[2:].strip())
        else:
            items[-1] += " " + line.strip()
    return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>"


def block_end(lines: list[str], start: int, belongs: Callable[[str], bool]) -> int:
    end = start + 1
    while end < len(lines) and belongs(lines[end].rstrip()):
        end += 1
    return end


def is_paragraph(line: str) -> bool:
    return bool(line.strip()) and not re.match(r"(```|\||[-*] |#{1,6}\s)", line)


def inline(text: str) -> str:
    """Escaped text with `code` and **bold**."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def markdown_table(lines: list[str]) -> Markup:
    rows = [split_row(line) for line in lines]
    aligned = len(rows) > 1 and all(re.fullmatch(r":?-{1,}:?", c.strip()) for c in rows[1])
    align = [alignment(c) for c in rows[1]] if aligned else []
    body_rows = rows[2:] if aligned else rows[1:]
    head = "".join(f"<th{style(align, n)}>{inline(c)}</th>" for n, c in enumerate(rows[0]))
    body = "".join(
        "<tr>"
        + "".join(f"<td{style(align, n)}>{inline(c)}</td>" for n, c in enumerate(r))
        + "</tr>"
        for r in body_rows
    )
    return Markup(
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def alignment(cell: str) -> str:
    cell = cell.strip()
    if cell.startswith(":") and cell.endswith(":"):
        return "center"
    return "right" if cell.endswith(":") else ""


def style(align: list[str], n: int) -> str:
    return f' style="text-align:{align[n]}"' if n < len(align) and align[n] else ""
