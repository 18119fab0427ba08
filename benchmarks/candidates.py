"""Candidate-only quality scoring vs full scoring (``--quality-candidates``).

(a) Synthetic clusters: the total-variation distance between the per-row inclusion
probabilities of kMQ with full scoring and with candidate-only scoring (Monte Carlo over many
seeds, several M and quality skews).

(b) ``mix-small``: a stratified subset, planted noise of each kind (``benchmarks/noise.py``,
spread), a real LM quality score (SmolLM2: the two NLLs of IFD, cached per row, so rows that no
noise kind changed are scored once); per seed: rows scored and the estimated scoring time of
full vs candidate-only kMQ, and the share of noisy rows in the selections of full kMQ,
candidate-only kMQ and random. Both IFD directions are computed from the same two NLLs.

    python benchmarks/candidates.py               # everything (NLLs cached in benchmarks/out)
    python benchmarks/candidates.py --score-only  # only fill the NLL cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
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

log = logging.getLogger("kmq.benchmarks")

KINDS = ("shuffle", "swap", "truncate")
WORK = BENCH_DIR / "out" / "candidates"


# -- the pools ------------------------------------------------------------------------------------


def stratified_subset(records: Sequence[dict[str, Any]], n: int, seed: int) -> np.ndarray:
    """``n`` row indices, every source ∝ its share of the pool (largest remainder), ascending."""
    sources = np.array([r.get("source") or "" for r in records])
    names, counts = np.unique(sources, return_counts=True)
    ideal = n * counts / counts.sum()
    take = np.floor(ideal).astype(np.int64)
    take[np.argsort(-(ideal - take), kind="stable")[: n - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    rows = [
        rng.choice(np.flatnonzero(sources == name), size=int(m), replace=False)
        for name, m in zip(names, take, strict=True)
    ]
    return np.sort(np.concatenate(rows))


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


# -- the NLL cache --------------------------------------------------------------------------------


def row_key(record: dict[str, Any]) -> str:
    turns = [[m["role"], m["content"]] for m in record["messages"]]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()[:24]


class NLLCache:
    """Per row (by content): NLL(y|x), NLL(y), tokens fed (both passes) and the estimated
    seconds the row cost (its chunk's wall time shared ∝ tokens)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, list[float]] = {}
        if path.exists():
            self.rows = json.loads(path.read_text(encoding="utf-8"))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".nll.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.rows, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def fill(self, records: Sequence[dict[str, Any]], *, max_length: int, chunk: int = 8) -> None:
        """Score every record not cached yet, ``chunk`` rows at a time (saved after each)."""
        from kmq.examples import Example, Message
        from kmq.models import load_causal_lm
        from kmq.quality.lm import score_responses

        todo: dict[str, dict[str, Any]] = {}
        for r in records:
            key = row_key(r)
            if key not in self.rows:
                todo.setdefault(key, r)
        if not todo:
            return
        log.info("scoring %d rows (%d cached)", len(todo), len(self.rows))
        model, tokenizer = load_causal_lm("smollm2", device="cpu")
        keys = list(todo)
        started = time.perf_counter()
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            examples = [
                Example(
                    id=k,
                    row=start + j,
                    messages=tuple(Message(m["role"], m["content"]) for m in todo[k]["messages"]),
                )
                for j, k in enumerate(part)
            ]
            t0 = time.perf_counter()
            cond = score_responses(
                model,
                tokenizer,
                [ex.prompt for ex in examples],
                [ex.response for ex in examples],
                max_length=max_length,
            )
            uncond = score_responses(
                model,
                tokenizer,
                [None] * len(examples),
                [ex.response for ex in examples],
                max_length=max_length,
            )
            seconds = time.perf_counter() - t0
            tokens = (
                cond.context_tokens
                + cond.response_tokens
                + uncond.context_tokens
                + uncond.response_tokens
            ).astype(np.float64)
            share = seconds * tokens / max(tokens.sum(), 1.0)
            for i, key in enumerate(part):
                self.rows[key] = [
                    float(cond.nll[i]),
                    float(uncond.nll[i]),
                    float(tokens[i]),
                    float(share[i]),
                ]
            self.save()
            done = start + len(part)
            rate = done / (time.perf_counter() - started)
            log.info("%d/%d rows scored (%.2f rows/s)", done, len(keys), rate)

    def has(self, records: Sequence[dict[str, Any]]) -> bool:
        """Whether every record is scored already."""
        return all(row_key(r) in self.rows for r in records)

    def table(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """(n, 4): NLL(y|x), NLL(y), tokens, seconds of each record (all must be cached)."""
        return np.array([self.rows[row_key(r)] for r in records], dtype=np.float64)


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


# -- (b) planted noise on mix-small ---------------------------------------------------------------


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


def ifd_scores(nll: np.ndarray) -> dict[str, np.ndarray]:
    """Both IFD directions from NLL(y|x) and NLL(y) (columns 0 and 1 of the cache table)."""
    log_ifd = nll[:, 0] - nll[:, 1]
    authors = np.where(log_ifd < 0, log_ifd, log_ifd.min() - 50.0)
    return {
        "-log IFD (kmq's pmi)": -log_ifd,
        "log IFD (Cherry LLM; IFD ≥ 1 weighted e^-50)": authors,
    }


def noise_table(
    embeddings: np.ndarray,
    variants: dict[str, tuple[list[dict[str, Any]], np.ndarray]],
    cache: NLLCache,
    *,
    k: int,
    budget: int,
    multiples: Sequence[int],
    seeds: Sequence[int],
) -> tuple[list[list[object]], list[list[object]], dict[str, dict[str, list[float]]]]:
    """Per kind and score: rows scored, scoring time and noise share, full vs candidates (each
    seed's k-means is fitted once and shared by every setting, as a run with that seed would)."""
    from kmq.clustering import kmeans
    from kmq.pipeline import select

    labels = {seed: kmeans(embeddings, k, seed=seed).labels_ for seed in seeds}

    cost_rows: list[list[object]] = []
    share_rows: list[list[object]] = []
    plot: dict[str, dict[str, list[float]]] = {}
    for kind, (records, noisy) in variants.items():
        answers = [r["messages"][-1]["content"] for r in records]
        scores = {"length (answer characters)": np.array([len(a) for a in answers], dtype=float)}
        seconds = None
        if cache.has(records):
            table = cache.table(records)
            seconds = table[:, 3]
            scores |= ifd_scores(table[:, :2])
        n = len(records)
        for score_name, quality in scores.items():
            settings: list[tuple[str, int | None]] = [("full", None)]
            settings += [(f"M = {m}", m) for m in multiples]
            for label, multiple in settings:
                shares, scored, cost = [], [], []
                for seed in seeds:
                    asked: list[np.ndarray] = []

                    def score(
                        rows: np.ndarray,
                        asked: list[np.ndarray] = asked,
                        quality: np.ndarray = quality,
                    ) -> np.ndarray:
                        asked.append(rows)
                        return quality[rows]

                    result = select(
                        embeddings,
                        budget,
                        labels=labels[seed],
                        quality=score,
                        quality_candidates=multiple,
                        seed=seed,
                    )
                    shares.append(float(noisy[result.indices].mean()))
                    scored.append(len(asked[0]))
                    cost.append(float(seconds[asked[0]].sum()) if seconds is not None else 0.0)
                share_rows.append(
                    [
                        kind,
                        score_name,
                        label,
                        float(np.mean(shares)),
                        float(np.std(shares) / np.sqrt(len(shares))),
                    ]
                )
                plot.setdefault(f"{kind}: {score_name}", {})[label] = float(np.mean(shares))
                if score_name.startswith("length"):  # the rows scored do not depend on the score
                    timed = seconds is not None
                    cost_rows.append(
                        [
                            kind,
                            label,
                            float(np.mean(scored)),
                            n / float(np.mean(scored)),
                            float(np.mean(cost)) if timed else "not scored",
                            float(seconds.sum()) / float(np.mean(cost)) if timed else "—",  # type: ignore[union-attr]
                        ]
                    )
        for method in ("random", "km-random"):
            shares = [
                float(
                    noisy[
                        select(embeddings, budget, labels=labels[s], method=method, seed=s).indices
                    ].mean()
                )
                for s in seeds
            ]
            share_rows.append(
                [
                    kind,
                    "(none)",
                    method,
                    float(np.mean(shares)),
                    float(np.std(shares) / np.sqrt(len(shares))),
                ]
            )
        log.info("noise: %s done", kind)
    return cost_rows, share_rows, plot


SYNTHETIC_HEADERS = [
    "skew",
    "M",
    "rows scored",
    "pool rows",
    "TV(full, candidates)",
    "TV(full, full′) floor",
]
COST_HEADERS = [
    "noise",
    "scoring",
    "rows scored (mean)",
    "× fewer rows",
    "est. scoring s",
    "× less time",
]
TARGET_HEADERS = [
    "noise",
    "score",
    "scoring",
    "× fewer rows",
    "noise share full → candidates",
    "relative change",
    "target",
]


def report_body(
    args: argparse.Namespace,
    synthetic: list[list[object]],
    cost: list[list[object]],
    shares: list[list[object]],
    lm: dict[str, Any],
) -> str:
    full = {(r[0], r[1]): (float(r[3]), float(r[4])) for r in shares if r[2] == "full"}  # type: ignore[arg-type]
    share_rows = []
    verdicts = []
    fewer = {(r[0], r[1]): float(r[3]) for r in cost}  # type: ignore[arg-type]
    for kind, score, label, mean, se in shares:
        ref = full.get((kind, score))
        rel = ""
        if ref is not None and label != "full" and ref[0] > 0:
            change = (mean - ref[0]) / ref[0]  # type: ignore[operator]
            rel = f"{100 * change:+.0f}%"
            verdicts.append(
                [
                    kind,
                    score,
                    label,
                    f"{fewer[(kind, label)]:.1f}×",
                    f"{ref[0]:.3f} → {mean:.3f}",
                    rel,
                    "met" if fewer[(kind, label)] >= 10 and abs(change) <= 0.10 else "missed",
                ]
            )
        share_rows.append([kind, score, label, f"{mean:.3f} ± {se:.3f}", rel])
    ifd_kinds = ", ".join(lm["kinds"]) or "none"
    missing = ", ".join(k for k in args.kinds.split(",") if k not in lm["kinds"]) or "none"
    per_row = f"{lm['per_row']:.2f}" if lm["per_row"] is not None else "—"
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

## (b) Planted noise on `mix-small`

A {args.n}-row subset of `{args.pool.name}`, stratified by source (seed 0); for each kind,
{args.fraction:.0%} of its rows (among rows the kind can change) get a noisy answer
(`benchmarks/noise.py`: shuffle = words shuffled, swap = another row's answer, truncate = first
sentence only; spread uniformly, noise seed 0). Quality: SmolLM2-135M-Instruct on torch fp32,
CPU, `max_length` {args.max_length}, NLL(y|x) and NLL(y) per row (the two passes of IFD), from
which both IFD directions are computed. k-means with k = {args.k} on the rows' user-view MiniLM
embeddings (clusters depend only on prompts, so they are the same for every kind), budget
{args.budget}, balanced quotas, kMQ's default weighting (`auto` → softmax, T = 1; the scores are
signed), seeds 0–{args.seeds - 1} (k-means and draw). Rows are scored once by content, so rows
no kind changed are shared by the kinds. Scoring time per row is its 8-row chunk's wall time
shared ∝ the tokens it fed; {lm["rows"]} rows scored, mean {per_row} s per row.

**LM scores are complete for: {ifd_kinds}; not scored in time: {missing}** (every kind also has
`length`, kmq's characters-of-the-answer heuristic, as a free score; the rows-scored counts do
not depend on the score).

### Rows scored and scoring time

{markdown_table(COST_HEADERS, cost)}

### Noise share of the selection

Share of the {args.budget} picks that are noisy rows (mean ± standard error over the seeds);
the last column is the relative difference from full scoring with the same score. `random` and
`km-random` use no score.

{markdown_table(["noise", "score", "selection", "noise share", "vs full"], share_rows)}

### Target: ≥ 10× less scoring with the noise share within 10 % (relative) of the full draw's

"× fewer rows" is exact (rows the scorer was run on); read the relative change against the
standard errors above.

{markdown_table(TARGET_HEADERS, verdicts)}
"""


def save_plot(
    out: Path,
    curves: dict[float, list[float]],
    multiples: Sequence[int],
    shares: dict[str, dict[str, list[float]]] | dict[str, dict[str, float]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for skew, tv in curves.items():
        left.plot(multiples, tv, marker="o", label=f"skew {skew:g}")
    left.set_xscale("log", base=2)
    left.set_xlabel("M (candidates per quota row)")
    left.set_ylabel("TV(full, candidates) of inclusion probabilities")
    left.set_title("(a) synthetic clusters")
    left.legend()
    names = list(shares)
    labels = list(next(iter(shares.values())))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        right.bar(
            np.arange(len(names)) + i * width,
            [shares[name][label] for name in names],  # type: ignore[index]
            width,
            label=label,
        )
    right.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    right.set_xticklabels([n.replace(": ", "\n") for n in names], fontsize=6)
    right.set_ylabel("noise share of the selection")
    right.set_title("(b) mix-small subset, kMQ")
    right.legend(fontsize=7)
    save_figure(fig, out, "candidates")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--n", type=int, default=160, help="rows of the stratified subset")
    parser.add_argument("--fraction", type=float, default=0.25, help="noisy share per kind")
    parser.add_argument("--max-length", type=int, default=64, help="LM window (tokens)")
    parser.add_argument("--k", type=int, default=4, help="clusters of the subset")
    parser.add_argument("--budget", type=int, default=8, help="rows selected from the subset")
    parser.add_argument("--multiples", default="1,2,4,8", help="M values compared with full")
    parser.add_argument("--seeds", type=int, default=200, help="selection seeds per setting")
    parser.add_argument("--draws", type=int, default=400, help="Monte Carlo draws for (a)")
    parser.add_argument("--skews", default="0.5,1,2", help="sd of the log-weights for (a)")
    parser.add_argument("--embeddings", type=Path, help=".npy of the pool's embeddings (+ .ids)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="noise kinds to report")
    parser.add_argument("--score-only", action="store_true", help="only fill the NLL cache")
    parser.add_argument(
        "--no-fill", action="store_true", help="score nothing: IFD only for kinds already scored"
    )
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    setup_logging()
    started = time.perf_counter()
    records = read_records(args.pool)
    subset = stratified_subset(records, args.n, seed=0)
    pool = [records[i] for i in subset]
    planted = noisy_pools(pool, args.fraction, seed=0)
    variants = {kind: planted[kind] for kind in args.kinds.split(",")}  # scored in this order
    cache = NLLCache(args.work / f"nll-max{args.max_length}.json")
    needed = list(pool)
    for noisy_records, mask in variants.values():
        needed += [noisy_records[i] for i in np.flatnonzero(mask)]
    if not args.no_fill:
        cache.fill(needed, max_length=args.max_length)
    if args.score_only:
        return 0
    multiples = [int(v) for v in args.multiples.split(",")]
    skews = [float(v) for v in args.skews.split(",")]
    synthetic, curves = cached_synthetic(args.work, skews, multiples, args.draws)
    embeddings = load_embeddings(args.embeddings, pool, args.pool)
    seeds = list(range(args.seeds))
    cost, shares, plot = noise_table(
        embeddings, variants, cache, k=args.k, budget=args.budget, multiples=multiples, seeds=seeds
    )
    cached = [cache.rows[row_key(r)] for r in needed if row_key(r) in cache.rows]
    lm = {
        "kinds": [kind for kind, (records, _) in variants.items() if cache.has(records)],
        "rows": len({row_key(r) for r in needed if row_key(r) in cache.rows}),
        "per_row": float(np.mean([c[3] for c in cached])) if cached else None,
    }
    body = report_body(args, synthetic, cost, shares, lm)
    write_report(
        args.out,
        "candidates",
        "Candidate-only quality scoring vs full scoring",
        body,
        time.perf_counter() - started,
        command_line(argv),
    )
    save_plot(args.out, curves, multiples, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
