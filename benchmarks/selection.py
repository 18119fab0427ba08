"""Selection-level evidence, no training: what each method picks from a clean and a noisy pool.

For every method and seed (selection seed = k-means seed), on the clean pool and on the same
pool with planted noise (``benchmarks/noise.py``), measure the selection itself:

- ``noisy share``: fraction of the picks whose gold answer was corrupted (noisy pool only), and
  its ratio to the pool's noisy share among selectable rows (1 = blind to noise);
- ``source entropy``: Shannon entropy (bits) of the picks' sources;
- ``pool coverage``: facility location on the embeddings, mean over every pool row of its best
  cosine to a pick (higher = the picks represent the pool better);
- ``held-out coverage``: the same over held-out rows (``--holdout`` per source, removed from the
  pool before selection and fixed across seeds) — the rows the downstream benchmark evaluates on.

Each (pool, method, seed) selection is cached atomically by a hash of its inputs, so an
interrupted or widened run (``--seeds``, ``--methods``) computes only what is missing. Methods
are compared with random seed by seed (paired; the seed fixes the k-means and the draw) with
``quality/stats.py``: mean difference, 95 % t interval, and a two-sided paired t-test
Holm-corrected over every (method, metric, pool) comparison. Writes ``results/selection.md``
and ``selection.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    markdown_table,
    save_figure,
    setup_logging,
    write_report,
)
from noise import NoiseSpec, plant, read_records, write_outputs
from quality.stats import PairedTest, holm, paired_test
from tqdm import tqdm

from kmq.atomic import write_json
from kmq.examples import Example
from kmq.formats import load_pool
from kmq.pipeline import select

METHODS: dict[str, dict[str, Any]] = {
    "random": {"method": "random"},
    "km-closest-balanced": {"method": "km-closest", "allocation": "balanced"},
    "km-random-proportional": {"method": "km-random", "allocation": "proportional"},
    "km-random-balanced": {"method": "km-random", "allocation": "balanced"},
    "kmq-proportional": {"method": "kmq", "allocation": "proportional"},
    "kmq-balanced": {"method": "kmq", "allocation": "balanced"},
    "deita": {"method": "deita"},
    "qdit": {"method": "qdit"},
    "k-center": {"method": "k-center"},
}
WITH_QUALITY = {"kmq", "deita", "qdit"}
DEFAULT_NOISE = (
    NoiseSpec("swap", 0.10, "clusters"),
    NoiseSpec("shuffle", 0.10 / 0.9, "spread"),
    NoiseSpec("truncate", 0.10 / 0.8, "spread"),
)
"""≈ 30 % of rows: whole clusters of swapped answers (10 %), then shuffled and truncated answers
spread over every cluster (10 % of all rows each; later specs draw among rows still clean)."""

METRICS = ("noisy share", "noise ratio", "source entropy", "pool coverage", "held-out coverage")


def sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def holdout_rows(sources: Sequence[str], per_source: int, seed: int) -> np.ndarray:
    """``per_source`` rows of every source (all of a source with fewer), seeded, sorted."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    held = [
        rng.choice(rows, size=min(per_source, len(rows)), replace=False)
        for _, rows in sorted(by_source.items())
    ]
    return np.sort(np.concatenate(held))


def coverage(x: np.ndarray, picks: np.ndarray, block: int = 8192) -> float:
    """Mean over the rows of ``x`` of the best cosine to a row of ``picks`` (unit vectors)."""
    best = [np.max(x[i : i + block] @ picks.T, axis=1) for i in range(0, len(x), block)]
    return float(np.concatenate(best).mean())


def entropy_bits(labels: Sequence[str]) -> float:
    counts = np.array(list(Counter(labels).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def quality_scores(name: str, examples: Sequence[Example], scores: Path | None) -> np.ndarray:
    if scores is not None:
        q = np.load(scores)
        if len(q) != len(examples):
            raise SystemExit(f"error: {scores}: {len(q)} scores, the pool has {len(examples)}")
        return np.asarray(q, dtype=np.float64)
    from kmq.quality import get_quality_scorer

    return np.asarray(get_quality_scorer(name).score(examples), dtype=np.float64)


def measure(
    picks: np.ndarray,
    x: np.ndarray,
    pool_rows: np.ndarray,
    held: np.ndarray,
    sources: Sequence[str],
    noisy: np.ndarray | None,
) -> dict[str, float]:
    sel = x[picks]
    out = {
        "source entropy": entropy_bits([sources[i] for i in picks]),
        "pool coverage": coverage(x[pool_rows], sel),
        "held-out coverage": coverage(x[held], sel),
    }
    if noisy is not None:
        share = float(noisy[picks].mean())
        out["noisy share"] = share
        out["noise ratio"] = share / float(noisy[pool_rows].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--embeddings", type=Path, help=".npy of the pool's user-view rows")
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--holdout", type=int, default=50, help="held-out rows per source")
    parser.add_argument("--quality", default="length", help="kmq quality scorer for kMQ/Deita/QDIT")
    parser.add_argument("--quality-scores", type=Path, help=".npy scores of the clean pool")
    parser.add_argument("--noisy-quality-scores", type=Path, help=".npy scores of the noisy pool")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--run", type=Path, default=Path("benchmarks/out/selection"))
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"error: unknown --methods {unknown}; known: {', '.join(METHODS)}")
    args.run.mkdir(parents=True, exist_ok=True)

    records = read_records(args.pool)
    clean = load_pool(args.pool)
    if len(clean.examples) != len(records):
        sys.exit(f"error: {args.pool}: {len(records)} records, {len(clean.examples)} valid rows")
    x = embeddings(args, clean)
    sources = [ex.source or "?" for ex in clean.examples]
    from kmq.pipeline import cluster

    noise_labels = cluster(x, 16, seed=args.noise_seed)[0].labels_
    noisy_records, noisy_rows, noise_summary = plant(
        records, noise_labels, DEFAULT_NOISE, args.noise_seed
    )
    noisy_path = args.run / f"noisy-{sha(str(args.pool), args.noise_seed)}.jsonl.gz"
    if not noisy_path.exists():
        write_outputs(noisy_path, noisy_records, noisy_rows, noise_summary)
    noisy_pool = load_pool(noisy_path)
    is_noisy = np.zeros(len(records), dtype=bool)
    is_noisy[list(noisy_rows)] = True

    held = holdout_rows(sources, args.holdout, seed=0)
    pool_rows = np.setdiff1d(np.arange(len(records)), held)
    pools = {
        "clean": (quality_scores(args.quality, clean.examples, args.quality_scores), None),
        "noisy": (
            quality_scores(args.quality, noisy_pool.examples, args.noisy_quality_scores),
            is_noisy,
        ),
    }
    quality_id = str(args.quality_scores or args.quality)
    rows: list[dict[str, Any]] = []
    jobs = [(p, m, s) for p in pools for m in methods for s in range(args.seeds)]
    for pool_name, method, seed in tqdm(jobs, desc="selections"):
        quality, noisy = pools[pool_name]
        settings = METHODS[method]
        key = sha(
            pool_name,
            quality_id,
            noise_summary["noisy"],
            method,
            settings,
            seed,
            args.budget,
            args.k,
            args.holdout,
            len(records),
        )
        path = args.run / pool_name / method / f"s{seed}-{key}.json"
        if path.exists():
            picks = np.array(json.loads(path.read_text())["indices"], dtype=np.int64)
        else:
            t0 = time.perf_counter()
            result = select(
                x,
                args.budget,
                k=args.k,
                quality=quality if settings["method"] in WITH_QUALITY else None,
                exclude=held,
                seed=seed,
                **settings,
            )
            picks = np.asarray(result.indices, dtype=np.int64)
            write_json(path, {"indices": picks.tolist(), "seconds": time.perf_counter() - t0})
        rows.append(
            {
                "pool": pool_name,
                "method": method,
                "seed": seed,
                **measure(picks, x, pool_rows, held, sources, noisy),
            }
        )
    report(args, rows, methods, noise_summary, time.perf_counter() - started)


def embeddings(args: argparse.Namespace, pool: Any) -> np.ndarray:
    if args.embeddings is not None:
        x = np.load(args.embeddings)
        if len(x) != len(pool.examples):
            sys.exit(f"error: {args.embeddings}: {len(x)} rows, the pool has {len(pool.examples)}")
        return np.ascontiguousarray(x, dtype=np.float32)
    from kmq.config import SelectConfig
    from kmq.pipeline import embed_pool

    config = SelectConfig(input=str(args.pool), out="", cache_dir=str(args.cache_dir))
    return embed_pool(pool, config)[0]


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    methods: list[str],
    noise_summary: dict[str, Any],
    seconds: float,
) -> None:
    def values(pool: str, method: str, metric: str) -> np.ndarray:
        got = [r for r in rows if r["pool"] == pool and r["method"] == method]
        return np.array([r[metric] for r in sorted(got, key=lambda r: r["seed"])])

    sections = []
    comparisons: list[tuple[str, str, str, PairedTest]] = []
    for pool in ("clean", "noisy"):
        metrics = [m for m in METRICS if pool == "noisy" or m not in ("noisy share", "noise ratio")]
        table = []
        for method in methods:
            cells = [method]
            for metric in metrics:
                v = values(pool, method, metric)
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
                if method != "random":
                    comparisons.append(
                        (pool, method, metric, paired_test(v - values(pool, "random", metric)))
                    )
            table.append(cells)
        sections.append(
            f"### {pool} pool (mean ± seed std over {args.seeds} seeds)\n\n"
            + markdown_table(["method", *metrics], table)
        )
    tested = [i for i, c in enumerate(comparisons) if c[3].undefined is None]
    adjusted = dict(zip(tested, holm([comparisons[i][3].p for i in tested]), strict=True))
    diff_rows = []
    for i, (pool, method, metric, t) in enumerate(comparisons):
        ci = "n/a" if t.undefined else f"[{t.ci[0]:+.4f}, {t.ci[1]:+.4f}]"
        p_holm = adjusted.get(i, math.nan)
        diff_rows.append(
            [
                pool,
                method,
                metric,
                f"{t.mean:+.4f}",
                ci,
                f"n/a ({t.undefined})" if t.undefined else f"{t.p:.2g}",
                "n/a" if math.isnan(p_holm) else f"{p_holm:.2g}",
                "yes" if p_holm <= 0.05 else "no",
            ]
        )
    noise_lines = "; ".join(
        f"{s['kind']} ({s['where']}): {s['noisy']} rows" for s in noise_summary["specs"]
    )
    body = (
        f"Pool `{args.pool.name}` ({noise_summary['rows']} rows), budget {args.budget}, "
        f"k = {args.k}, quality `{args.quality_scores or args.quality}` for kMQ/Deita/QDIT, "
        f"seeds 0–{args.seeds - 1}, {args.holdout} held-out rows per source removed before "
        f"selection. Noisy pool: {noise_summary['noisy']} noisy rows "
        f"({noise_summary['noisy'] / noise_summary['rows']:.1%}) — {noise_lines}.\n\n"
        + "\n\n".join(sections)
        + "\n\n### Each method − random, paired by seed\n\n95 % t interval of the mean "
        "difference; p from a two-sided paired t-test (exact t); 'p (Holm)' adjusted over all "
        f"{len(comparisons)} comparisons; significant = Holm-adjusted p ≤ 0.05.\n\n"
        + markdown_table(
            ["pool", "method", "metric", "mean diff", "95 % CI", "p", "p (Holm)", "significant"],
            diff_rows,
        )
    )
    plot(args.out / "selection.png", rows, methods)
    write_report(
        args.out, "selection", "Selection-level metrics, clean and noisy pool", body, seconds
    )


def plot(path: Path, rows: list[dict[str, Any]], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (pool, metric) in zip(
        axes,
        [("noisy", "noise ratio"), ("clean", "source entropy"), ("clean", "held-out coverage")],
        strict=True,
    ):
        data = [
            [r[metric] for r in rows if r["pool"] == pool and r["method"] == m] for m in methods
        ]
        ax.boxplot(data, orientation="horizontal", tick_labels=methods)
        ax.set_title(f"{metric} ({pool} pool)")
    fig.tight_layout()
    save_figure(fig, path.parent, path.stem)


if __name__ == "__main__":
    main()
