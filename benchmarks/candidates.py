"""Candidate-only quality scoring vs full scoring (``--quality-candidates``).

(a) Synthetic clusters: the total-variation distance between the per-row inclusion
probabilities of kMQ with full scoring and with candidate-only scoring (Monte Carlo over many
seeds, several M and quality skews).

(b) The whole ``mix-small`` pool with planted noise of each kind (``benchmarks/noise.py``, 25 %
spread, noise seeds 0–2), k = 32, budget 512: rows scored, the estimated scoring time, and the
share of noisy rows that kMQ picks with full scoring and with M × quota candidates, for kmq's
``pmi``, Cherry LLM's ``ifd`` and ``length``, against random and km-random. The LM scores are
looked up by row in a table of both IFD passes of every row (``benchmarks/pool_nll.py``: the
pools here are rebuilt in code with the same functions, so their rows are the table's).

    python benchmarks/candidates.py --nll-table NLL.npz --embeddings POOL-MINILM.npy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BENCH_DIR,
    DEFAULT_RESULTS,
    POOLS,
    command_line,
    markdown_table,
    save_figure,
    setup_logging,
    write_report,
)
from noise import NoiseSpec, plant, read_records
from pool_nll import NOISE_FRACTION, NOISE_SEEDS, require_table, table_quality
from quality.stats import paired_test

from kmq.atomic import write_json

log = logging.getLogger("kmq.benchmarks")

KINDS = ("shuffle", "swap", "truncate")
WORK = BENCH_DIR / "out" / "candidates"


# -- the pools ------------------------------------------------------------------------------------


def noisy_pools(
    records: list[dict[str, Any]], fraction: float, seed: int
) -> dict[str, tuple[list[dict[str, Any]], np.ndarray]]:
    """Per noise kind: the noisy pool and a mask of its noisy rows (spread uniformly)."""
    labels = np.zeros(len(records), dtype=np.int64)
    out = {}
    for kind in KINDS:
        noisy_records, noisy, _ = plant(
            records, labels, [NoiseSpec(kind, fraction, "spread")], seed
        )
        mask = np.zeros(len(records), dtype=bool)
        mask[list(noisy)] = True
        out[kind] = (noisy_records, mask)
    return out


# -- (a) inclusion probabilities on synthetic clusters ------------------------------------------


def synthetic_pool(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of 12 clusters of 30 to 600 rows, and a N(0, 1) quality draw per row."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(30, 600, 12).round().astype(np.int64)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return labels, rng.normal(size=len(labels))


def inclusion(
    labels: np.ndarray,
    quality: np.ndarray,
    budget: int,
    multiple: int | None,
    seeds: range,
) -> np.ndarray:
    """P(row picked) under kMQ (softmax weighting), estimated over ``seeds``."""
    from kmq.selectors import KMQSelector

    selector = KMQSelector(weighting="softmax", candidates=multiple)
    empty = np.empty((len(labels), 0), dtype=np.float32)
    counts = np.zeros(len(labels))
    for seed in seeds:
        counts[
            selector.select(empty, budget, labels=labels, quality=quality, seed=seed).indices
        ] += 1
    return counts / len(seeds)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """TV distance between inclusion vectors, each normalised to sum to 1 (÷ budget)."""
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def synthetic_table(
    skews: Sequence[float], multiples: Sequence[int], budget: int, draws: int
) -> tuple[list[list[object]], dict[float, list[float]]]:
    labels, z = synthetic_pool(0)
    rows: list[list[object]] = []
    curves: dict[float, list[float]] = {}
    for skew in skews:
        quality = skew * z  # softmax weights exp(q): log-weights with sd = skew
        full = inclusion(labels, quality, budget, None, range(draws))
        floor = total_variation(
            full, inclusion(labels, quality, budget, None, range(draws, 2 * draws))
        )
        curves[skew] = []
        for m in multiples:
            got = inclusion(labels, quality, budget, m, range(draws))
            tv = total_variation(full, got)
            curves[skew].append(tv)
            scored = int(np.minimum(m * budget_quotas(labels, budget), np.bincount(labels)).sum())
            rows.append([skew, m, scored, len(labels), tv, floor])
        log.info("synthetic: skew %s done", skew)
    return rows, curves


def cached_synthetic(
    work: Path, skews: Sequence[float], multiples: Sequence[int], draws: int
) -> tuple[list[list[object]], dict[float, list[float]]]:
    """:func:`synthetic_table` (budget 200), kept in ``work`` under its settings (it is numpy
    only but takes minutes on a loaded machine)."""
    path = (
        work / f"synthetic-{'_'.join(map(str, skews))}-{'_'.join(map(str, multiples))}-{draws}.json"
    )
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved["rows"], {float(k): v for k, v in saved["curves"].items()}
    rows, curves = synthetic_table(skews, multiples, 200, draws)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "curves": curves}), encoding="utf-8")
    return rows, curves


def budget_quotas(labels: np.ndarray, budget: int) -> np.ndarray:
    from kmq.allocation import allocate

    return allocate("balanced", budget, np.bincount(labels))


# -- (b) planted noise on the whole mix-small pool ------------------------------------------------


def load_embeddings(path: Path | None, records: Sequence[dict[str, Any]], pool: Path) -> np.ndarray:
    """User-view MiniLM embeddings of ``records``: rows of ``path`` (its ``.ids`` file beside it
    names the rows) or, without it, embedded now through kmq's cache."""
    if path is not None:
        ids = path.with_name(path.name + ".ids").read_text(encoding="utf-8").split("\n")
        where = {id_: i for i, id_ in enumerate(ids)}
        vectors = np.load(path, mmap_mode="r")
        return np.ascontiguousarray(vectors[[where[r["id"]] for r in records]], dtype=np.float32)
    from kmq.cache import embed_cached
    from kmq.encoders import get_encoder
    from kmq.formats import load_pool

    wanted = {r["id"] for r in records}
    examples = {ex.id: ex for ex in load_pool(pool).examples if ex.id in wanted}
    texts = [examples[r["id"]].text("user") for r in records]
    vectors, _ = embed_cached(texts, get_encoder("minilm"), view="user", show_progress=False)
    return np.asarray(vectors, dtype=np.float32)


def pool_scores(examples: Sequence[Any], table: Path) -> dict[str, np.ndarray]:
    """The scores compared, per row: kmq's ``pmi``, ``pmi-total`` and ``ifd`` (Cherry LLM's IFD)
    from the NLL table, and ``length`` (characters of the answer, free)."""
    return {
        "pmi": table_quality(table, examples, "pmi"),
        "pmi-total": table_quality(table, examples, "pmi-total"),
        "ifd (Cherry)": table_quality(table, examples, "ifd"),
        "length": np.array([len(ex.response) for ex in examples], dtype=np.float64),
    }


def draw(
    embeddings: np.ndarray,
    labels: np.ndarray,
    quality: np.ndarray,
    *,
    budget: int,
    multiple: int | None,
    seed: int,
) -> tuple[np.ndarray, int]:
    """kMQ's picks (balanced quotas, default weighting) and how many rows it asked scores of."""
    from kmq.pipeline import select

    asked: list[int] = []

    def score(rows: np.ndarray) -> np.ndarray:
        asked.append(len(rows))
        return quality[rows]

    result = select(
        embeddings, budget, labels=labels, quality=score, quality_candidates=multiple, seed=seed
    )
    return np.asarray(result.indices), asked[0]


def noise_runs(
    embeddings: np.ndarray,
    records: list[dict[str, Any]],
    table: Path,
    *,
    k: int,
    budget: int,
    fraction: float,
    multiples: Sequence[int],
    noise_seeds: Sequence[int],
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """One entry per (noise seed, kind, score, setting, selection seed): the noise share of the
    picks and the rows scored. Each selection seed's k-means is fitted once and shared by every
    pool and setting (the clusters depend on the prompts only, which the noise leaves alone)."""
    from kmq.clustering import kmeans
    from kmq.formats import load_pool
    from kmq.pipeline import select

    labels = {seed: kmeans(embeddings, k, seed=seed).labels_ for seed in seeds}
    log.info("k-means fitted for %d seeds", len(seeds))
    settings: list[tuple[str, int | None]] = [("full", None)]
    settings += [(f"M = {m}", m) for m in multiples]
    runs: list[dict[str, Any]] = []
    for noise_seed in noise_seeds:
        for kind, (noisy_records, noisy) in noisy_pools(records, fraction, noise_seed).items():
            scores = pool_scores(load_pool(noisy_records).examples, table)
            base = {"kind": kind, "noise_seed": noise_seed}
            for seed in seeds:
                for score_name, quality in scores.items():
                    for label, multiple in settings:
                        picks, scored = draw(
                            embeddings,
                            labels[seed],
                            quality,
                            budget=budget,
                            multiple=multiple,
                            seed=seed,
                        )
                        runs.append(
                            base
                            | {"seed": seed, "score": score_name, "setting": label}
                            | {"share": float(noisy[picks].mean()), "scored": scored}
                        )
                for method in ("random", "km-random"):
                    picks = select(
                        embeddings, budget, labels=labels[seed], method=method, seed=seed
                    ).indices
                    runs.append(
                        base
                        | {"seed": seed, "score": "(none)", "setting": method}
                        | {"share": float(noisy[picks].mean()), "scored": 0}
                    )
            runs.append(
                base
                | {"seed": -1, "score": "(pool)", "setting": "pool"}
                | {"share": float(noisy.mean()), "scored": 0}
            )
            log.info("noise seed %d, %s done", noise_seed, kind)
    return runs


GPU_ROWS_PER_S = 314.0
"""Both IFD passes, torch float32, batch 64, max_length 512 on one H200: 61,424 rows in 196 s
(``benchmarks/results/gpu_check.md``, run 2)."""
CPU_ROWS_PER_S = 0.6505
"""Both IFD passes, torch float32, batch 8, max_length 512 on this 2-core CPU
(``benchmarks/results/ifd_throughput.md``)."""
LM_SCORES = ("pmi", "pmi-total", "ifd (Cherry)")
TARGET_FEWER = 10.0
TARGET_CHANGE = 0.10


def values(runs: Sequence[dict[str, Any]], kind: str, score: str, setting: str) -> np.ndarray:
    """The noise shares of one (kind, score, setting), ordered by (noise seed, seed)."""
    got = [r for r in runs if (r["kind"], r["score"], r["setting"]) == (kind, score, setting)]
    return np.array([r["share"] for r in sorted(got, key=lambda r: (r["noise_seed"], r["seed"]))])


def mean_se(v: np.ndarray) -> str:
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {se:.3f}"


def relative_change(full: np.ndarray, got: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """(mean(got) − mean(full)) / mean(full), and its 95 % interval from the paired t interval of
    the differences (the denominator taken as exact); None when the differences are all equal."""
    change = float((got.mean() - full.mean()) / full.mean())
    test = paired_test(got - full)
    if test.undefined is not None:
        return change, None
    return change, (test.ci[0] / float(full.mean()), test.ci[1] / float(full.mean()))


def pct(change: float, ci: tuple[float, float] | None) -> str:
    interval = "" if ci is None else f" [{100 * ci[0]:+.0f}, {100 * ci[1]:+.0f}]"
    return f"{100 * change:+.0f}%{interval}"


def cost_rows(
    runs: Sequence[dict[str, Any]], n: int, settings: Sequence[str]
) -> list[list[object]]:
    rows: list[list[object]] = []
    for setting in settings:
        scored = np.array([r["scored"] for r in runs if r["setting"] == setting])
        mean = float(scored.mean())
        rows.append(
            [
                setting,
                f"{mean:,.1f} ({scored.min():,}–{scored.max():,})",
                f"{n / mean:.2f}×",
                f"{mean / GPU_ROWS_PER_S:.1f}",
                f"{mean / CPU_ROWS_PER_S / 3600:.2f}",
            ]
        )
    return rows


def fewer_rows(runs: Sequence[dict[str, Any]], n: int, setting: str) -> float:
    return n / float(np.mean([r["scored"] for r in runs if r["setting"] == setting]))


def share_rows(
    runs: Sequence[dict[str, Any]], kind: str, settings: Sequence[str], scores: Sequence[str]
) -> list[list[object]]:
    km = values(runs, kind, "(none)", "km-random")
    rows: list[list[object]] = []
    for score in scores:
        full = values(runs, kind, score, "full")
        moved = paired_test(full - km)
        lo, hi = moved.ci
        for setting in settings:
            got = values(runs, kind, score, setting)
            change = "" if setting == "full" else pct(*relative_change(full, got))
            if setting == "full":
                gain = ""
            elif moved.undefined is not None or lo <= 0 <= hi:
                gain = "n/a (full ≈ km-random)"
            else:
                gain = f"{(km.mean() - got.mean()) / (km.mean() - full.mean()):.2f}"
            rows.append([score, setting, mean_se(got), change, gain])
    for method in ("random", "km-random"):
        rows.append(["(none)", method, mean_se(values(runs, kind, "(none)", method)), "", ""])
    pool = values(runs, kind, "(pool)", "pool")
    rows.append(["(none)", "the pool itself", f"{pool.mean():.3f}", "", ""])
    return rows


def verdicts(
    runs: Sequence[dict[str, Any]], n: int, kinds: Sequence[str], multiples: Sequence[int]
) -> tuple[list[list[object]], dict[int, int], dict[int, int]]:
    """The target per (kind, LM score, M), and per M how many (kind, LM score) pairs keep the
    noise share within 10 % of full's, and how many at most 10 % above it."""
    rows: list[list[object]] = []
    within = dict.fromkeys(multiples, 0)
    no_worse = dict.fromkeys(multiples, 0)
    for kind in kinds:
        for score in LM_SCORES:
            full = values(runs, kind, score, "full")
            for m in multiples:
                got = values(runs, kind, score, f"M = {m}")
                change, ci = relative_change(full, got)
                fewer = fewer_rows(runs, n, f"M = {m}")
                close = abs(change) <= TARGET_CHANGE
                within[m] += close
                no_worse[m] += change <= TARGET_CHANGE
                met = fewer >= TARGET_FEWER and close
                rows.append(
                    [
                        kind,
                        score,
                        f"M = {m}",
                        f"{fewer:.2f}×",
                        f"{full.mean():.3f} → {got.mean():.3f}",
                        pct(change, ci),
                        "met" if met else "missed",
                        "yes" if change <= TARGET_CHANGE else "no",
                    ]
                )
    return rows, within, no_worse


SYNTHETIC_HEADERS = [
    "skew",
    "M",
    "rows scored",
    "pool rows",
    "TV(full, candidates)",
    "TV(full, full′) floor",
]
COST_HEADERS = [
    "scoring",
    "rows scored: mean (min–max)",
    "× fewer rows",
    "est. s on one H200 (fp32)",
    "est. h on the 2-core CPU (fp32)",
]
SHARE_HEADERS = ["score", "selection", "noise share", "vs full [95 % CI]", "shift kept"]
TARGET_HEADERS = [
    "noise",
    "score",
    "scoring",
    "× fewer rows",
    "noise share full → candidates",
    "relative change [95 % CI]",
    "target",
    "no worse than +10 %",
]


def report_body(
    args: argparse.Namespace,
    synthetic: list[list[object]],
    runs: list[dict[str, Any]],
    n: int,
    multiples: Sequence[int],
) -> str:
    settings = ["full", *(f"M = {m}" for m in multiples)]
    kinds = list(dict.fromkeys(r["kind"] for r in runs))
    per_kind = "\n\n".join(
        f"#### {kind}\n\n"
        + markdown_table(SHARE_HEADERS, share_rows(runs, kind, settings, [*LM_SCORES, "length"]))
        for kind in kinds
    )
    target, within, no_worse = verdicts(runs, n, kinds, multiples)
    pairs = len(kinds) * len(LM_SCORES)
    reading = "; ".join(
        f"M = {m} ({fewer_rows(runs, n, f'M = {m}'):.1f}× fewer rows): {within[m]} of {pairs} "
        f"within, {no_worse[m]} of {pairs} no worse"
        for m in multiples
    )
    keeps = [m for m in multiples if within[m] == pairs]
    smallest = (
        f"the smallest M that keeps every pair within 10 % is **M = {keeps[0]}** "
        f"({fewer_rows(runs, n, f'M = {keeps[0]}'):.1f}× fewer rows)"
        if keeps
        else f"**no M tried keeps every pair within 10 %** (largest M = {max(multiples)})"
    )
    n_runs = len(args.noise_seeds.split(",")) * args.seeds
    return f"""
Candidate-only scoring (`--quality-candidates M`): per cluster, M × quota candidates are drawn
uniformly from the cluster's own stream, only they are scored, and kMQ's quality-weighted draw
runs among them. Full scoring is the same draw over every row of the cluster.

## (a) Inclusion probabilities on synthetic clusters

12 clusters of 30 to 600 rows ({sum(np.geomspace(30, 600, 12).round().astype(int))} rows),
budget 200 (balanced quotas), softmax weighting of a quality q = skew × N(0, 1) (the
log-weights have sd = skew: 0.5 is nearly flat, 2 makes a few rows dominate). P(row picked)
estimated from {args.draws} seeds for full scoring and for each M; the table gives the
total-variation distance between the two inclusion vectors (each ÷ budget, so 0 = the same
distribution over rows, 1 = disjoint). The last column is the Monte Carlo floor: the distance
between two independent full-scoring estimates of {args.draws} seeds each.

{markdown_table(SYNTHETIC_HEADERS, synthetic)}

## (b) Planted noise on the whole `mix-small` pool

All {n:,} rows of `{args.pool.name}`; for each kind, {args.fraction:.0%} of the rows the kind
can change get a noisy answer (`benchmarks/noise.py`: shuffle = words shuffled, swap = another
row's answer, truncate = first sentence only; spread uniformly), noise seeds {args.noise_seeds}.
Scores: kmq's `pmi` (NLL(y) − NLL(y|x), higher = the prompt helps more) and `ifd` (Cherry LLM's
IFD = exp(NLL(y|x) − NLL(y)) where < 1, else 0; higher = harder), both from one table of the two
IFD passes of every distinct row (`benchmarks/pool_nll.py`: SmolLM2-135M-Instruct, torch
float32, `max_length` 512, scored on a GPU; rows with an empty response get the lowest score),
and `length` (characters of the answer, free). k-means with k = {args.k} on the rows' user-view
MiniLM embeddings (prompts only, so the clusters are the same for every pool), budget
{args.budget}, balanced quotas, kMQ's default weighting (`auto`: softmax for
`pmi`, which is signed; ∝ q for `ifd` and `length`), selection seeds 0–{args.seeds - 1} (k-means
and draw) for each noise seed: {n_runs} selections per cell.

### Rows scored and estimated scoring time

"rows scored" is exact (the rows the scorer was asked for); the candidates depend on the
clusters and the seed only, so the counts are the same for every kind and score. Time =
rows ÷ the measured rate of both IFD passes: {GPU_ROWS_PER_S:g} rows/s on one H200 in float32
(`benchmarks/results/gpu_check.md`) and {CPU_ROWS_PER_S:g} rows/s on this 2-core CPU in float32
(`benchmarks/results/ifd_throughput.md`); candidates are a uniform sample of each cluster, so
their mean cost per row is the pool's.

{markdown_table(COST_HEADERS, cost_rows(runs, n, settings))}

### Noise share of the selection

Share of the {args.budget} picks that are noisy rows: mean ± standard error over the
{n_runs} (noise seed, selection seed) runs. "vs full": relative change of the mean from full
scoring with the same score, with the 95 % interval of the paired (same clusters, same seed)
differences ÷ full's mean. "shift kept": (km-random − candidates) ÷ (km-random − full), the
share of full scoring's move of the noise share away from the unscored draw that candidates
keep, whichever way the score moves it (M = 1 is km-random's distribution: 0 expected; n/a
where full's paired difference from km-random has a 95 % interval that holds 0). `random` and
`km-random` use no score.

{per_kind}

### Target: ≥ 10× less scoring with the noise share within 10 % (relative) of the full draw's

{markdown_table(TARGET_HEADERS, target)}

"target" is the issue's two-sided test; "no worse than +10 %" is the one-sided reading (fewer
noisy rows than full scoring is no loss on this metric).
(kind, LM score) pairs whose noise share stays within 10 % of full's, and at most 10 % above
it: {reading}. So {smallest}.
"""


def save_plot(
    out: Path,
    curves: dict[float, list[float]],
    multiples: Sequence[int],
    runs: Sequence[dict[str, Any]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in runs))
    fig, axes = plt.subplots(1, 1 + len(kinds), figsize=(4.2 * (1 + len(kinds)), 4))
    left = axes[0]
    for skew, tv in curves.items():
        left.plot(multiples, tv, marker="o", label=f"skew {skew:g}")
    left.set_xscale("log", base=2)
    left.set_xlabel("M (candidates per quota row)")
    left.set_ylabel("TV(full, candidates) of inclusion probabilities")
    left.set_title("(a) synthetic clusters")
    left.legend()
    ticks = [*multiples, 2 * max(multiples)]
    for ax, kind in zip(axes[1:], kinds, strict=True):
        for score in (*LM_SCORES, "length"):
            shares = [values(runs, kind, score, f"M = {m}").mean() for m in multiples]
            shares.append(values(runs, kind, score, "full").mean())
            ax.plot(ticks, shares, marker="o", label=score)
        for method, style in (("random", ":"), ("km-random", "--")):
            ax.axhline(
                values(runs, kind, "(none)", method).mean(), color="grey", ls=style, label=method
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(m) for m in multiples] + ["full"])
        ax.set_xlabel("M")
        ax.set_title(f"(b) {kind}: kMQ's noise share")
        ax.legend(fontsize=7)
    axes[1].set_ylabel("noise share of the selection")
    save_figure(fig, out, "candidates")


def file_digest(path: Path) -> str:
    """sha256 (16 hex) of a file's bytes: the runs cache is keyed by its inputs' contents."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--nll-table", type=Path, help="pool_nll.py score's .npz (required)")
    parser.add_argument("--embeddings", type=Path, help=".npy of the pool's embeddings (+ .ids)")
    parser.add_argument("--fraction", type=float, default=NOISE_FRACTION, help="noisy share")
    parser.add_argument(
        "--noise-seeds", default=",".join(map(str, NOISE_SEEDS)), help="noise seeds"
    )
    parser.add_argument("--k", type=int, default=32, help="clusters")
    parser.add_argument("--budget", type=int, default=512, help="rows selected")
    parser.add_argument("--multiples", default="1,2,4,8", help="M values compared with full")
    parser.add_argument("--seeds", type=int, default=10, help="selection seeds per noise seed")
    parser.add_argument("--draws", type=int, default=400, help="Monte Carlo draws for (a)")
    parser.add_argument("--skews", default="0.5,1,2", help="sd of the log-weights for (a)")
    parser.add_argument("--work", type=Path, default=WORK, help="caches of (a) and (b)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    table = require_table(args.nll_table)
    setup_logging()
    started = time.perf_counter()
    multiples = [int(v) for v in args.multiples.split(",")]
    skews = [float(v) for v in args.skews.split(",")]
    synthetic, curves = cached_synthetic(args.work, skews, multiples, args.draws)
    records = read_records(args.pool)
    noise_seeds = [int(v) for v in args.noise_seeds.split(",")]
    inputs = [file_digest(args.pool), file_digest(table)]
    if args.embeddings is not None:
        inputs.append(file_digest(args.embeddings))
    key = [inputs, args.k, args.budget, args.fraction, multiples, noise_seeds, args.seeds]
    key.append(list(LM_SCORES))  # the scores compared
    path = args.work / f"runs-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.json"
    note = ""
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        runs = saved["runs"]
        took = saved["seconds"]
        note = f"(Selections of (b) read from the cache; computing them took {took:.0f} s.)"
        log.info("selections read from %s", path)
    else:
        t0 = time.perf_counter()
        runs = noise_runs(
            load_embeddings(args.embeddings, records, args.pool),
            records,
            table,
            k=args.k,
            budget=args.budget,
            fraction=args.fraction,
            multiples=multiples,
            noise_seeds=noise_seeds,
            seeds=list(range(args.seeds)),
        )
        write_json(path, {"runs": runs, "seconds": time.perf_counter() - t0})
    body = report_body(args, synthetic, runs, len(records), multiples)
    write_report(
        args.out,
        "candidates",
        "Candidate-only quality scoring vs full scoring",
        body,
        time.perf_counter() - started,
        command_line(argv),
        note,
    )
    save_plot(args.out, curves, multiples, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
