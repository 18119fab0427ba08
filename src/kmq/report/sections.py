"""The report's sections: summary, composition, cluster map, clusters, quality, rounds,
benchmarks."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kmq.errors import KmqError
from kmq.outputs import CLUSTERS, entropy
from kmq.report.html import (
    Cell,
    Markup,
    Section,
    bullets,
    esc,
    key_values,
    note,
    num,
    plain,
    plot,
    table,
)
from kmq.report.lengths import lengths_section
from kmq.report.load import Picks, Rounds, Selection
from kmq.report.markdown import markdown_html
from kmq.report.terms import LABEL_TERMS, distinctive_terms
from kmq.reweight import cluster_means

MAX_CLUSTERS = 300  # rows of the cluster table (the largest clusters)
EXAMPLES = 3  # example prompts per cluster
PROMPT_CHARS = 160  # an example prompt is cut here
MOVERS = 10  # rows of the boosted / starved tables
HIGHLIGHT = 5  # clusters drawn in colour on the weight plot (each way)
ANNOTATE = 15  # largest clusters numbered on the map


@dataclass
class ClusterFacts:
    """Per cluster: rows picked, mean picked quality, distinctive terms, example prompts."""

    picked: np.ndarray
    quality: np.ndarray
    terms: list[list[str]] | None
    examples: list[list[str]]
    no_terms: str = "the input texts are not available"  # why ``terms`` is None

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
    examples = example_prompts(texts, picks, data.labels, k)
    try:
        if data.labels is not None:
            terms = distinctive_terms(texts, data.labels, k)
        elif picks.positions is not None:
            terms = distinctive_terms([texts[i] for i in picks.positions], picks.clusters, k)
        else:
            return ClusterFacts(picked, quality, None, examples)
    except KmqError as exc:  # scikit-learn is not installed
        return ClusterFacts(picked, quality, None, examples, str(exc))
    return ClusterFacts(picked, quality, terms, examples)


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


def selection_sections(data: Selection, max_clusters: int) -> list[Section]:
    facts = cluster_facts(data, data.k) if data.k else None
    sections = [
        summary_section(data),
        composition_section(data, facts),
        cluster_map_section(data, facts),
        clusters_section(data, facts, max_clusters),
        quality_section(data),
    ]
    if data.rounds is None:
        sections.append(lengths_section(data.statistics))
    else:
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
        body.append(note(f"no distinctive terms or labels: {facts.no_terms}"))
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
