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
Holm-corrected over every (method, metric, pool) comparison, plus each method − balanced
km-random on the noisy share (does the quality score, not the clusters, avoid the noise?).

Quality for kMQ/Deita/QDIT: a kmq scorer (``--quality``, default ``length``), per-row ``.npy``
scores (``--quality-scores``, ``--noisy-quality-scores``), or kmq's ``pmi`` / ``ifd`` looked up by
row in a table of both IFD passes (``--nll-table NLL.npz --quality pmi,ifd``: one arm per
quality; ``benchmarks/pool_nll.py`` makes the table). Writes ``results/selection.md`` and
``selection.png`` (``selection_lm.*`` with ``--nll-table``; ``--name`` to choose):

    python benchmarks/selection.py --embeddings POOL-MINILM.npy --seeds 10
    python benchmarks/selection.py --embeddings POOL-MINILM.npy --seeds 10 \\
        --nll-table NLL.npz --quality pmi,ifd
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

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
from pool_nll import QUALITIES, require_table, scored_by, table_quality
from quality.harness import METHODS as GRID_METHODS
from quality.stats import PairedTest, holm, paired_test
from tqdm import tqdm

from kmq.atomic import write_json
from kmq.engines import get_engine
from kmq.examples import Example
from kmq.formats import load_pool
from kmq.loop import IterateConfig, round_sizes
from kmq.pipeline import cluster, select
from kmq.reweight import cluster_means, initial_weights, update
from kmq.selectors import KMQSelector
from kmq.selectors.base import available_mask

METHODS: dict[str, dict[str, Any]] = {
    **{
        name: settings
        for name, settings in GRID_METHODS.items()
        if name not in ("km-closest-proportional", "iterative-kmq")
    },
    **{
        f"kmq-{allocation}-std": {
            "method": "kmq",
            "allocation": allocation,
            "quality_weighting": "standardized",
        }
        for allocation in ("proportional", "balanced")
    },
    **{
        f"kmq-{allocation}-std-t{temperature:g}": {
            "method": "kmq",
            "allocation": allocation,
            "quality_weighting": "standardized",
            "temperature": temperature,
        }
        for allocation in ("proportional", "balanced")
        for temperature in (0.5, 0.25)
    },
    **{
        f"iterative-kmq-{name}": {
            "method": "iterative-kmq",
            "rounds": 3,
            "feedback": feedback,
            "quality_weighting": "standardized",
            **extra,
        }
        for name, feedback, extra in (
            ("std", "gold-fit", {}),
            ("sound", "gold-sound", {}),
            ("sound-prop", "gold-sound", {"allocation": "proportional"}),
        )
    },
}
"""The quality grid's one-shot methods, less km-closest-proportional; kMQ with the scale-free
``standardized`` weighting (a softmax in units of the score's σ: the raw softmax of a score
spread over tens of nats is an argmax inside each cluster), at the default temperature 1 and at
0.5 and 0.25 (``-t0.5``, ``-t0.25``: a row one σ better is e² or e⁴ times as likely, the knob
between avoiding the noise and covering the pool); and iterative kMQ (see
:func:`iterate_picks`) with ``kmq iterate``'s default feedback ``gold-sound``
(``iterative-kmq-sound``) or the earlier default ``gold-fit`` (``iterative-kmq-std``), and with
``gold-sound`` from round-1 weights ∝ cluster size (``iterative-kmq-sound-prop``: ``kmq iterate
--allocation proportional``, the quotas of the best one-shot arm)."""
WITH_QUALITY = {"kmq", "deita", "qdit", "iterative-kmq"}
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
    kinds: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics of one selection; with ``kinds`` (each row's noise kind, "" if clean) also
    the share of the picks of each kind (``"<kind> share"``, descriptive, not tested)."""
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
    if kinds is not None:
        for kind in sorted(set(kinds.tolist()) - {""}):
            out[f"{kind} share"] = float((kinds[picks] == kind).mean())
    return out


class Arm(NamedTuple):
    """One arm of the comparison: a method of :data:`METHODS` with the quality it reads."""

    label: str
    method: str
    quality: str | None


def make_arms(methods: Sequence[str], qualities: Sequence[str]) -> list[Arm]:
    """Every method; one arm per quality for the methods that read one (labelled
    ``method (quality)`` when there are several qualities)."""
    arms = []
    for method in methods:
        if METHODS[method]["method"] not in WITH_QUALITY:
            arms.append(Arm(method, method, None))
            continue
        for q in qualities:
            arms.append(Arm(method if len(qualities) == 1 else f"{method} ({q})", method, q))
    return arms


def values_digest(values: np.ndarray) -> str:
    """sha256 (16 hex) of an array's values (its bytes in its own dtype)."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]


@dataclass
class Bench:
    """The two pools of the comparison and what every selection of them shares."""

    args: argparse.Namespace
    x: np.ndarray  # the clean pool's user-view embeddings (both pools select on them)
    sources: list[str]
    examples: dict[str, list[Example]]  # "clean" and "noisy", row for row
    noisy_path: Path
    is_noisy: np.ndarray
    noise_kinds: np.ndarray
    noise_summary: dict[str, Any]
    held: np.ndarray  # held-out rows (``--holdout`` per source), never selected
    pool_rows: np.ndarray  # the others
    scores: dict[tuple[str, str], np.ndarray]
    quality_ids: dict[tuple[str, str], str]  # (pool, quality) → what identifies its scores

    @cached_property
    def x_key(self) -> str:
        """A hash of ``x``'s values (computed once, when a pick's cache path first needs it)."""
        return values_digest(self.x)


def prepare(
    args: argparse.Namespace,
    qualities: Sequence[str],
    scored: Sequence[str] = ("clean", "noisy"),
) -> Bench:
    """Load the clean pool, plant the noise (written once under ``args.run``), hold rows out
    and read or compute every quality of the ``scored`` pools (a run of the clean pool alone
    needs no NLL table rows for the noisy one)."""
    records = read_records(args.pool)
    clean = load_pool(args.pool)
    if len(clean.examples) != len(records):
        sys.exit(f"error: {args.pool}: {len(records)} records, {len(clean.examples)} valid rows")
    x = embeddings(args, clean)
    sources = [ex.source or "?" for ex in clean.examples]
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
    noise_kinds = np.full(len(records), "", dtype=object)
    for row, kind in noisy_rows.items():
        noise_kinds[row] = kind
    held = holdout_rows(sources, args.holdout, seed=0)
    examples = {"clean": clean.examples, "noisy": noisy_pool.examples}
    scores: dict[tuple[str, str], np.ndarray] = {}
    quality_ids: dict[tuple[str, str], str] = {}
    given = {"clean": args.quality_scores, "noisy": args.noisy_quality_scores}
    for q in qualities:
        for pool_name in scored:
            if args.nll_table is not None:
                scores[pool_name, q] = table_quality(args.nll_table, examples[pool_name], q)
                quality_ids[pool_name, q] = f"{q}@{values_digest(scores[pool_name, q])}"
            else:
                scores[pool_name, q] = quality_scores(q, examples[pool_name], given[pool_name])
                quality_ids[pool_name, q] = str(given[pool_name] or q)
    return Bench(
        args=args,
        x=x,
        sources=sources,
        examples=examples,
        noisy_path=noisy_path,
        is_noisy=is_noisy,
        noise_kinds=noise_kinds,
        noise_summary=noise_summary,
        held=held,
        pool_rows=np.setdiff1d(np.arange(len(records)), held),
        scores=scores,
        quality_ids=quality_ids,
    )


def selection_key(bench: Bench, pool_name: str, arm: Arm, seed: int) -> str:
    """A hash of every input of these picks but the embeddings' values: the same on two
    machines whose CPUs embed the pool a float rounding apart (which can move a few k-means
    assignments, and so the picks, of some seeds). A quality read from ``--nll-table`` enters by
    the values of this pool's scores, not by the table's file: a table extended with another
    pool's rows keeps the keys of the picks it already made."""
    args = bench.args
    return sha(
        pool_name,
        bench.quality_ids[pool_name, arm.quality] if arm.quality else None,
        bench.noise_summary["noisy"],
        arm.method,
        METHODS[arm.method],
        seed,
        args.budget,
        args.k,
        args.holdout,
        len(bench.x),
    )


def pick_path(bench: Bench, pool_name: str, arm: Arm, seed: int) -> Path:
    """Where :func:`pick` caches these picks (a hash of every input that can change them,
    the embeddings' values included)."""
    key = sha(selection_key(bench, pool_name, arm, seed), bench.x_key)
    return bench.args.run / pool_name / arm.label / f"s{seed}-{key}.json"


def pick(bench: Bench, pool_name: str, arm: Arm, seed: int) -> tuple[np.ndarray, float | None]:
    """The rows ``arm`` picks from ``pool_name`` with ``seed``, and the seconds the cached
    selection took (None when it was computed now). Cached atomically by a hash of its inputs
    under ``args.run`` (:func:`pick_path`)."""
    args = bench.args
    settings = METHODS[arm.method]
    path = pick_path(bench, pool_name, arm, seed)
    if path.exists():
        saved = json.loads(path.read_text())
        return np.array(saved["indices"], dtype=np.int64), float(saved["seconds"])
    t0 = time.perf_counter()
    common: dict[str, Any] = {
        "k": args.k,
        "quality": bench.scores[pool_name, arm.quality] if arm.quality else None,
        "exclude": bench.held,
        "seed": seed,
    }
    extra: dict[str, Any] = {}
    if settings["method"] == "iterative-kmq":
        scorer = feedback_cache(bench, settings["feedback"])
        picks, weights = iterate_picks(
            bench.x,
            args.budget,
            **common,
            feedback=lambda rows: scorer.scores(bench.examples[pool_name], rows),
            rounds=settings["rounds"],
            quality_weighting=settings["quality_weighting"],
            allocation=settings.get("allocation", "balanced"),
        )
        extra["weights_after"] = weights
    else:
        result = select(bench.x, args.budget, **common, **settings)
        picks = np.asarray(result.indices, dtype=np.int64)
    write_json(path, {"indices": picks.tolist(), "seconds": time.perf_counter() - t0} | extra)
    return picks, None


def iterate_picks(
    x: np.ndarray,
    budget: int,
    *,
    k: int,
    quality: np.ndarray | None,
    exclude: np.ndarray,
    seed: int,
    feedback: Callable[[np.ndarray], np.ndarray],
    rounds: int = 3,
    quality_weighting: str = "auto",
    allocation: str = "balanced",
) -> tuple[np.ndarray, list[list[float]]]:
    """Iterative kMQ's picks and each round's weights after feedback, drawn exactly as
    :class:`kmq.loop.IterativeSelection` draws them (the same k-means, round sizes, per-round
    seeds, weighted quotas, exclusions and reweighting with ``kmq iterate``'s defaults; a test
    checks it against the loop), for a feedback scorer that reads no trained model, such as
    ``gold-sound`` (the gold answers under the fixed reference LM): the loop's training would
    change nothing here, so no round is trained. ``feedback(rows)`` gives one score per row."""
    defaults = {f.name: f.default for f in fields(IterateConfig)}
    labels = cluster(x, k, seed=seed)[0].labels_
    engine = get_engine("local")
    capacity = np.bincount(labels[available_mask(len(labels), exclude)], minlength=k)
    weights = initial_weights(allocation, capacity)
    picked: list[np.ndarray] = []
    history: list[list[float]] = []
    for r, size in enumerate(round_sizes(budget, rounds), start=1):
        before = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        result = engine.select(
            KMQSelector(weighting=quality_weighting),
            x,
            size,
            labels=labels,
            quality=quality,
            weights=weights,
            exclude=np.union1d(before, exclude),
            seed=np.random.SeedSequence(seed, spawn_key=(r,)),
        )
        picked.append(np.asarray(result.indices, dtype=np.int64))
        if r == rounds:
            break
        means, present = cluster_means(labels[picked[-1]], feedback(picked[-1]), k)
        weights = update(
            weights,
            means,
            present,
            rule=defaults["rule"],
            positive=defaults["positive"],
            temperature=defaults["reweight_temperature"],
            floor=defaults["floor"],
        )
        history.append(weights.tolist())
    return np.concatenate(picked), history


class FeedbackCache:
    """A feedback scorer's score per (prompt, gold answer), kept in a JSON file (written
    atomically after every ``chunk`` rows scored, with a progress bar over the chunks, so an
    interrupted call resumes where it stopped) so that seeds and the two pools (whose clean rows
    are the same) score each row once. The scorer is built on first need."""

    def __init__(self, path: Path, name: str, chunk: int = 64) -> None:
        self.path = path
        self.name = name
        self.chunk = chunk
        self.saved: dict[str, float | None] = json.loads(path.read_text()) if path.exists() else {}
        self._scorer: Any = None

    @staticmethod
    def key(ex: Example) -> str:
        return sha([[m.role, m.content] for m in ex.prompt], ex.response)

    def scores(self, examples: Sequence[Example], rows: np.ndarray) -> np.ndarray:
        keys = [self.key(examples[i]) for i in rows]
        todo = {key: i for i, key in zip(rows.tolist(), keys, strict=True) if key not in self.saved}
        if todo:
            if self._scorer is None:
                from kmq.feedback import get_feedback_scorer

                self._scorer = get_feedback_scorer(self.name)
            items = list(todo.items())
            chunks = [items[i : i + self.chunk] for i in range(0, len(items), self.chunk)]
            for chunk in tqdm(chunks, desc=f"feedback {self.name}", disable=len(chunks) < 2):
                got = self._scorer.score(
                    [examples[i].prompt for _, i in chunk],
                    [examples[i].response for _, i in chunk],
                    [""] * len(chunk),
                )
                for (key, _), value in zip(chunk, got, strict=True):
                    self.saved[key] = float(value) if np.isfinite(value) else None
                self._save()
        return np.array([np.nan if self.saved[key] is None else self.saved[key] for key in keys])

    def _save(self) -> None:
        """Write the scores, merged under a lock with what another process (a downstream run
        beside a selection run) wrote to the same file since this one read it."""
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("w") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                if self.path.exists():
                    self.saved = json.loads(self.path.read_text()) | self.saved
                write_json(self.path, self.saved)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_FEEDBACK: dict[tuple[Path, str], FeedbackCache] = {}


def feedback_cache(bench: Bench, name: str) -> FeedbackCache:
    """The run folder's cache of feedback ``name`` (one per process)."""
    path = bench.args.run / f"feedback-{name}.json"
    if (path, name) not in _FEEDBACK:
        _FEEDBACK[path, name] = FeedbackCache(path, name)
    return _FEEDBACK[path, name]


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
    parser.add_argument(
        "--quality",
        default="length",
        help="kmq quality scorer for kMQ/Deita/QDIT; with --nll-table: pmi, ifd or pmi,ifd",
    )
    parser.add_argument("--quality-scores", type=Path, help=".npy scores of the clean pool")
    parser.add_argument("--noisy-quality-scores", type=Path, help=".npy scores of the noisy pool")
    parser.add_argument(
        "--nll-table", type=Path, help="pool_nll.py score's .npz: --quality read from it by row"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--pools", default="clean,noisy", help="clean, noisy or clean,noisy")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--run", type=Path, default=Path("benchmarks/out/selection"))
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--name", help="results file stem (default: selection, or selection_lm with --nll-table)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"error: unknown --methods {unknown}; known: {', '.join(METHODS)}")
    qualities = args.quality.split(",")
    if args.nll_table is not None:
        require_table(args.nll_table)
        if args.quality_scores or args.noisy_quality_scores:
            sys.exit(
                "error: --nll-table and --quality-scores/--noisy-quality-scores exclude each other"
            )
        bad = sorted(set(qualities) - set(QUALITIES))
        if bad:
            sys.exit(f"error: --quality {bad} not in the table's scores: {', '.join(QUALITIES)}")
    elif len(qualities) > 1:
        sys.exit(f"error: several --quality ({args.quality}) need --nll-table")
    name = args.name or ("selection_lm" if args.nll_table else "selection")
    args.run.mkdir(parents=True, exist_ok=True)

    bench = prepare(args, qualities)
    arms = make_arms(methods, qualities)
    rows: list[dict[str, Any]] = []
    cached: list[float] = []
    pools = [p for p in bench.examples if p in args.pools.split(",")]
    jobs = [(p, arm, s) for p in pools for arm in arms for s in range(args.seeds)]
    for pool_name, arm, seed in tqdm(jobs, desc="selections"):
        picks, seconds = pick(bench, pool_name, arm, seed)
        if seconds is not None:
            cached.append(seconds)
        rows.append(
            {
                "pool": pool_name,
                "method": arm.label,
                "seed": seed,
                **measure(
                    picks,
                    bench.x,
                    bench.pool_rows,
                    bench.held,
                    bench.sources,
                    bench.is_noisy if pool_name == "noisy" else None,
                    bench.noise_kinds if pool_name == "noisy" else None,
                ),
            }
        )
    noise_summary = bench.noise_summary
    if args.nll_table is not None:
        described = (
            f"{' and '.join(f'`{q}`' for q in qualities)} from the NLL table "
            f"`{args.nll_table.name}` (`benchmarks/pool_nll.py`: "
            f"{scored_by(args.nll_table) or 'SmolLM2-135M-Instruct, float32, max_length 512'}; "
            "`pmi` = NLL(y) − NLL(y|x), `ifd` = Cherry LLM's IFD, 0 when ≥ 1; "
            "an empty response gets the lowest score)"
        )
    else:
        described = f"`{args.quality_scores or args.quality}`"
    labels = [arm.label for arm in arms]
    note = (
        f"({len(cached)} of the {len(jobs)} selections read from the cache in `--run`; computing "
        f"them took {sum(cached):.0f} s.)"
        if cached
        else ""
    )
    seconds = time.perf_counter() - started
    report(args, name, rows, labels, described, noise_summary, seconds, note)


def embeddings(args: argparse.Namespace, pool: Any) -> np.ndarray:
    if args.embeddings is not None:
        x = np.load(args.embeddings)
        if len(x) != len(pool.examples):
            sys.exit(f"error: {args.embeddings}: {len(x)} rows, the pool has {len(pool.examples)}")
        return np.ascontiguousarray(x, dtype=np.float32)
    from kmq.config import SelectConfig
    from kmq.pools import embed_pool

    config = SelectConfig(input=str(args.pool), out="", cache_dir=str(args.cache_dir))
    return embed_pool(pool, config)[0]


BASELINE = "km-random-balanced"


def report(
    args: argparse.Namespace,
    name: str,
    rows: list[dict[str, Any]],
    methods: list[str],
    quality: str,
    noise_summary: dict[str, Any],
    seconds: float,
    note: str = "",
) -> None:
    def values(pool: str, method: str, metric: str) -> np.ndarray:
        got = [r for r in rows if r["pool"] == pool and r["method"] == method]
        return np.array([r[metric] for r in sorted(got, key=lambda r: r["seed"])])

    sections = []
    comparisons: list[tuple[str, str, str, str, PairedTest]] = []
    pools = [pool for pool in ("clean", "noisy") if any(r["pool"] == pool for r in rows)]
    for pool in pools:
        metrics = [m for m in METRICS if pool == "noisy" or m not in ("noisy share", "noise ratio")]
        table = []
        for method in methods:
            cells = [method]
            for metric in metrics:
                v = values(pool, method, metric)
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
                if method != "random":
                    test = paired_test(v - values(pool, "random", metric))
                    comparisons.append((pool, method, metric, "random", test))
            table.append(cells)
        sections.append(
            f"### {pool} pool (mean ± seed std over {args.seeds} seeds)\n\n"
            + markdown_table(["method", *metrics], table)
        )
    if BASELINE in methods and "noisy" in pools:
        for method in methods:
            if method not in ("random", BASELINE):
                d = values("noisy", method, "noisy share") - values(
                    "noisy", BASELINE, "noisy share"
                )
                comparisons.append(("noisy", method, "noisy share", BASELINE, paired_test(d)))
    tested = [i for i, c in enumerate(comparisons) if c[4].undefined is None]
    adjusted = dict(zip(tested, holm([comparisons[i][4].p for i in tested]), strict=True))
    diff_rows = []
    found: dict[tuple[str, str], tuple[PairedTest, float]] = {}
    for i, (pool, method, metric, baseline, t) in enumerate(comparisons):
        p_holm = adjusted.get(i, math.nan)
        if pool == "noisy" and metric == "noisy share":
            found[method, baseline] = (t, p_holm)
        diff_rows.append(
            [
                pool,
                f"{method} − {baseline}",
                metric,
                f"{t.mean:+.4f}",
                interval(t),
                f"n/a ({t.undefined})" if t.undefined else f"{t.p:.2g}",
                "n/a" if math.isnan(p_holm) else f"{p_holm:.2g}",
                "yes" if p_holm <= 0.05 else "no",
            ]
        )
    headline = []
    share_random = values("noisy", "random", "noisy share").mean()
    kinds = [s["kind"] for s in noise_summary["specs"]]
    for method in methods if "noisy" in pools else []:
        share = values("noisy", method, "noisy share")
        cells = [method, f"{share.mean():.4f} ± {share.std(ddof=1):.4f}"]
        cells += [f"{values('noisy', method, f'{kind} share').mean():.3f}" for kind in kinds]
        cells.append(f"{share.mean() / share_random:.2f}")
        for baseline in ("random", BASELINE):
            if (method, baseline) not in found:
                cells += ["", ""]
                continue
            t, p_holm = found[method, baseline]
            cells += [f"{t.mean:+.4f} {interval(t)}", holm_cell(p_holm)]
        headline.append(cells)
    noise_lines = "; ".join(
        f"{s['kind']} ({s['where']}): {s['noisy']} rows" for s in noise_summary["specs"]
    )
    body = (
        f"Pool `{args.pool.name}` ({noise_summary['rows']} rows), budget {args.budget}, "
        f"k = {args.k}, quality {quality} for kMQ/Deita/QDIT, "
        f"seeds 0–{args.seeds - 1}, {args.holdout} held-out rows per source removed before "
        f"selection. Noisy pool: {noise_summary['noisy']} noisy rows "
        f"({noise_summary['noisy'] / noise_summary['rows']:.1%}) — {noise_lines}.\n\n"
        "### Headline: noisy rows picked from the noisy pool\n\nNoise share of the picks (mean "
        "± seed std; then the mean share of each kind of noise), its ratio to random's, and "
        "the seed-paired difference from random and from "
        f"{BASELINE} (95 % t interval; p Holm-adjusted over the {len(tested)} comparisons "
        "of this run that have a test, * = ≤ 0.05).\n\n"
        + markdown_table(
            [
                "method",
                "noisy share",
                *(f"of which {kind}" for kind in kinds),
                "× random's",
                "− random [95 % CI]",
                "p (Holm)",
                f"− {BASELINE} [95 % CI]",
                "p (Holm)",
            ],
            headline,
        )
        + "\n\n"
        + "\n\n".join(sections)
        + "\n\n### Paired differences, by seed\n\nEach method − random on every metric, and "
        f"each method − {BASELINE} on the noisy share; 95 % t interval of the mean difference; p "
        "from a two-sided paired t-test (exact t); 'p (Holm)' adjusted over the "
        f"{len(tested)} comparisons with a test (n/a: zero spread, left out); significant = "
        "Holm-adjusted p ≤ 0.05.\n\n"
        + markdown_table(
            [
                "pool",
                "comparison",
                "metric",
                "mean diff",
                "95 % CI",
                "p",
                "p (Holm)",
                "significant",
            ],
            diff_rows,
        )
    )
    plot(args.out / f"{name}.png", rows, methods, pools)
    title = f"Selection-level metrics, {' and '.join(pools)} pool"
    write_report(args.out, name, title, body, seconds, run_time_note=note)


def interval(t: PairedTest) -> str:
    return "n/a" if t.undefined else f"[{t.ci[0]:+.4f}, {t.ci[1]:+.4f}]"


def holm_cell(p_holm: float) -> str:
    return "n/a" if math.isnan(p_holm) else f"{p_holm:.2g}{' *' if p_holm <= 0.05 else ''}"


def plot(path: Path, rows: list[dict[str, Any]], methods: list[str], pools: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("noisy", "noise ratio"),
        ("clean", "source entropy") if "clean" in pools else ("noisy", "source entropy"),
        ("clean", "held-out coverage") if "clean" in pools else ("noisy", "held-out coverage"),
    ]
    if "noisy" not in pools:
        panels = panels[1:]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (pool, metric) in zip(axes[0], panels, strict=True):
        data = [
            [r[metric] for r in rows if r["pool"] == pool and r["method"] == m] for m in methods
        ]
        ax.boxplot(data, orientation="horizontal", tick_labels=methods)
        ax.set_title(f"{metric} ({pool} pool)")
    fig.tight_layout()
    save_figure(fig, path.parent, path.stem)


if __name__ == "__main__":
    main()
