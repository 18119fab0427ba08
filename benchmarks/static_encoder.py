"""The static encoder (model2vec distilled from MiniLM) against MiniLM: speed and agreement.

Throughput: the same seeded sample of ``--n`` texts (user view) is encoded by
``get_encoder("minilm")`` and ``get_encoder("static")`` directly (no cache), in blocks of
``--block`` texts, MiniLM and static back to back with the order alternating block by block;
median of ``--repeats`` runs after a warm-up. Static is also timed on every text of the pool.

Agreement: full-pool embeddings of both (``embed_cached`` in ``--cache-dir``); for every k of
``--ks``: k-means of each (``kmq.pipeline.cluster``, same seed), ARI and NMI between the two
labelings; ``--budget`` selected by kMQ (balanced; no quality, so uniform within clusters) and
by km-closest on each encoder's own clustering: Jaccard of the picked rows, source composition,
and total variation distance between the picks' distributions over one encoder's clusters.

MiniLM on a large pool is slow on a CPU (about 45 min for mix.jsonl.gz), so the script stops
unless the MiniLM embeddings are already cached or ``--allow-embed`` is given.

    python benchmarks/static_encoder.py --n 2000 --repeats 3 --ks 64,256,1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    REPO,
    log,
    markdown_table,
    pool_texts,
    save_figure,
    setup_logging,
    write_report,
)
from embedding import timed_pair, token_lengths

SPEEDUP_TARGET = 20.0
VIEW = "user"
METHODS = ["kmq", "km-closest"]


# --- clustering agreement (sklearn when installed, else the same formulas in numpy) ---------


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of rows per (label in ``a``, label in ``b``), dense, labels compacted."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ka, kb = int(ia.max()) + 1, int(ib.max()) + 1
    return np.bincount(ia * kb + ib, minlength=ka * kb).reshape(ka, kb).astype(np.float64)


def ari_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie) from the contingency table."""
    table = contingency(a, b)
    n = table.sum()

    def pairs(x: np.ndarray | float) -> np.ndarray | float:
        return x * (x - 1) / 2

    index = float(pairs(table).sum())
    rows, cols = float(pairs(table.sum(1)).sum()), float(pairs(table.sum(0)).sum())
    expected = rows * cols / float(pairs(n))
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def nmi_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn's default)."""
    p = contingency(a, b)
    p /= p.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return 1.0 if ha == hb == 0 else mi / max((ha + hb) / 2, 1e-300)


def agreement_functions() -> tuple[str, Any, Any]:
    try:
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    except ImportError:
        return "numpy (sklearn not installed)", ari_numpy, nmi_numpy
    return "sklearn.metrics", adjusted_rand_score, normalized_mutual_info_score


# --- selections ------------------------------------------------------------------------------


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = set(x.tolist()), set(y.tolist())
    return len(sx & sy) / max(len(sx | sy), 1)


def tvd(labels: np.ndarray, x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Total variation distance between the distributions of rows ``x`` and ``y`` over the
    clusters ``labels`` (``y`` may be every row: the pool)."""
    p = np.bincount(labels[x], minlength=k) / max(len(x), 1)
    q = np.bincount(labels[y], minlength=k) / max(len(y), 1)
    return float(0.5 * np.abs(p - q).sum())


def source_count(sources: list[str], rows: np.ndarray | None = None) -> dict[str, int]:
    picked = sources if rows is None else [sources[i] for i in rows]
    return dict(Counter(picked))


def entropy(counts: dict[str, int]) -> float:
    """Shannon entropy (nats), as in benchmarks/select_full.py and the manifest."""
    p = np.array([v for v in counts.values() if v > 0], dtype=np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


# --- steps -----------------------------------------------------------------------------------


def minilm_cache_state(
    texts: list[str], encoder: Any, cache_dir: Path
) -> tuple[bool, Path, str | None]:
    """Whether MiniLM's embeddings of ``texts`` are cached as one pool segment; its folder;
    how many of the rows the per-row cache already holds, if some but not the pool's segment."""
    from kmq.cache import embedding_store
    from kmq.rowcache import keys_digest, row_keys

    store = embedding_store(encoder, view=VIEW, cache_dir=cache_dir)
    keys = row_keys(texts)
    final = store.segment_dir / f"pool-{keys_digest(keys)}"
    partial = None
    if not final.is_dir() and store.segment_dir.is_dir():
        held = len(texts) - len(store.locate(keys).missing)
        partial = f"{held:,} of {len(texts):,} rows in {store.folder.name}/"
    return final.is_dir(), final, partial


def throughput(
    minilm: Any,
    static: Any,
    texts: list[str],
    all_texts: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Block-alternating timing of both on ``texts``; static alone on ``all_texts``."""
    fns = {"MiniLM": minilm.encode, "static": static.encode}
    warm = texts[:64]
    for fn in fns.values():
        fn(warm)
    seconds, outputs = timed_pair(fns, texts, args.repeats, args.block, "sample")
    tokenizer = minilm.st.tokenizer
    n_tokens = int(token_lengths(tokenizer, texts).sum())
    rows = {}
    for name, secs in seconds.items():
        med = statistics.median(secs)
        rows[name] = {
            "texts_s": len(texts) / med,
            "tokens_s": n_tokens / med,
            "runs": secs,
            "dim": int(outputs[name].shape[1]),
        }
    log.info("static on all %d texts of the pool (uncached)", len(all_texts))
    started = time.perf_counter()
    static.encode(all_texts)
    full_s = time.perf_counter() - started
    full_tokens = int(token_lengths(tokenizer, all_texts).sum())
    log.info("static: %d texts in %.1f s", len(all_texts), full_s)
    return {
        "rows": rows,
        "n_tokens": n_tokens,
        "ratio": rows["static"]["texts_s"] / rows["MiniLM"]["texts_s"],
        "ratio_best": min(seconds["MiniLM"]) / min(seconds["static"]),
        "full_s": full_s,
        "full_tokens": full_tokens,
    }


def agreement(
    embs: dict[str, np.ndarray], sources: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Clusterings, ARI/NMI and the selections of both encoders for every k."""
    from kmq.config import resolve_budget
    from kmq.pipeline import cluster, select

    metric_name, ari, nmi = agreement_functions()
    n = len(sources)
    budget = resolve_budget(args.budget, n)
    per_k: list[dict[str, Any]] = []
    notes: set[str] = set()
    for k in args.ks:
        labels: dict[str, np.ndarray] = {}
        cluster_s: dict[str, float] = {}
        for name, x in embs.items():
            started = time.perf_counter()
            fitted, _ = cluster(x, k, seed=args.seed)
            cluster_s[name] = time.perf_counter() - started
            labels[name] = np.asarray(fitted.labels_)
            log.info("k=%d %s k-means %.1f s", k, name, cluster_s[name])
        picks: dict[tuple[str, str], np.ndarray] = {}
        for method in METHODS:
            for name, x in embs.items():
                result = select(x, budget, method=method, labels=labels[name], seed=args.seed)
                picks[method, name] = np.asarray(result.indices)
                notes.update(result.notes)
        # reference: kMQ on MiniLM's clustering with another seed (same clusters, new draws)
        again = select(
            embs["MiniLM"], budget, method="kmq", labels=labels["MiniLM"], seed=args.seed + 1
        )
        picks["kmq", "MiniLM seed+1"] = np.asarray(again.indices)
        every = np.arange(n)
        entry: dict[str, Any] = {
            "k": k,
            "ari": float(ari(labels["MiniLM"], labels["static"])),
            "nmi": float(nmi(labels["MiniLM"], labels["static"])),
            "cluster_s": cluster_s,
            "picks": picks,
            "jaccard": {m: jaccard(picks[m, "MiniLM"], picks[m, "static"]) for m in METHODS},
            "jaccard_seed": jaccard(picks["kmq", "MiniLM"], picks["kmq", "MiniLM seed+1"]),
            "tvd": {},
        }
        for m in METHODS:
            for own, other in (("MiniLM", "static"), ("static", "MiniLM")):
                lab = labels[own]
                entry["tvd"][m, own] = {
                    "between": tvd(lab, picks[m, "MiniLM"], picks[m, "static"], k),
                    "own_vs_pool": tvd(lab, picks[m, own], every, k),
                    "other_vs_pool": tvd(lab, picks[m, other], every, k),
                }
        entry["tvd_seed"] = tvd(
            labels["MiniLM"], picks["kmq", "MiniLM"], picks["kmq", "MiniLM seed+1"], k
        )
        log.info(
            "k=%d: ARI %.3f, NMI %.3f, Jaccard kmq %.3f km-closest %.3f",
            k,
            entry["ari"],
            entry["nmi"],
            entry["jaccard"]["kmq"],
            entry["jaccard"]["km-closest"],
        )
        per_k.append(entry)
    return {"per_k": per_k, "budget": budget, "metric": metric_name, "notes": sorted(notes)}


def plot(speed: dict[str, Any], agree: dict[str, Any], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), width_ratios=[1, 1.4])
    names = list(speed["rows"])
    values = [speed["rows"][n]["texts_s"] for n in names]
    bars = left.bar(names, values, color=["tab:blue", "tab:orange"])
    left.set_yscale("log")
    left.set_ylabel("texts / s (median, log scale)")
    left.set_title(f"encode throughput: {speed['ratio']:.0f}× (CPU)", fontsize=10)
    for bar, v in zip(bars, values, strict=True):
        left.annotate(f"{v:,.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom")
    left.set_ylim(top=max(values) * 4)

    ks = [e["k"] for e in agree["per_k"]]
    right.plot(ks, [e["ari"] for e in agree["per_k"]], "o-", label="ARI of the clusterings")
    right.plot(ks, [e["nmi"] for e in agree["per_k"]], "s-", label="NMI of the clusterings")
    for m, style in (("kmq", "^--"), ("km-closest", "v--")):
        right.plot(
            ks, [e["jaccard"][m] for e in agree["per_k"]], style, label=f"Jaccard of {m} picks"
        )
    right.plot(
        ks, [e["jaccard_seed"] for e in agree["per_k"]], "x:", label="Jaccard kmq, seed vs seed+1"
    )
    right.set_xscale("log", base=2)
    right.set_xticks(ks, [str(k) for k in ks])
    right.set_ylim(0, 1)
    right.set_xlabel("k")
    right.set_title("static vs MiniLM agreement", fontsize=10)
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, out, name)


def report(
    speed: dict[str, Any],
    agree: dict[str, Any],
    sources: list[str],
    n_sample: int,
    n_pool: int,
    static_name: str,
    args: argparse.Namespace,
) -> str:
    rows = speed["rows"]
    speed_table = markdown_table(
        ["encoder", "dim", "texts/s", "tokens/s", "s per run (runs)"],
        [
            [
                name,
                r["dim"],
                round(r["texts_s"], 1),
                round(r["tokens_s"], 1),
                ", ".join(f"{s:.2f}" for s in r["runs"]),
            ]
            for name, r in rows.items()
        ],
    )
    verdict = "meets" if speed["ratio"] >= SPEEDUP_TARGET else "MISSES"
    full = (
        f"Static on all {n_pool:,} texts of the pool, one `encode` call, uncached: "
        f"{speed['full_s']:.1f} s = {n_pool / speed['full_s']:,.0f} texts/s, "
        f"{speed['full_tokens'] / speed['full_s']:,.0f} tokens/s "
        f"({speed['full_tokens']:,} tokens)."
    )

    agree_rows = []
    for e in agree["per_k"]:
        agree_rows.append(
            [
                e["k"],
                round(e["ari"], 3),
                round(e["nmi"], 3),
                round(e["jaccard"]["kmq"], 3),
                round(e["jaccard_seed"], 3),
                round(e["jaccard"]["km-closest"], 3),
                round(e["cluster_s"]["MiniLM"], 1),
                round(e["cluster_s"]["static"], 1),
            ]
        )
    frac = agree["budget"] / n_pool
    agree_table = markdown_table(
        [
            "k",
            "ARI",
            "NMI",
            "Jaccard kmq",
            "Jaccard kmq MiniLM seed vs seed+1",
            "Jaccard km-closest",
            "k-means s MiniLM",
            "k-means s static",
        ],
        agree_rows,
    )

    tvd_rows = []
    for e in agree["per_k"]:
        for m in METHODS:
            for own in ("MiniLM", "static"):
                t = e["tvd"][m, own]
                tvd_rows.append(
                    [
                        e["k"],
                        m,
                        f"{own}'s",
                        round(t["between"], 3),
                        round(t["own_vs_pool"], 3),
                        round(t["other_vs_pool"], 3),
                    ]
                )
    tvd_table = markdown_table(
        [
            "k",
            "method",
            "clusters",
            "TVD MiniLM picks vs static picks",
            "TVD own picks vs pool",
            "TVD other's picks vs pool",
        ],
        tvd_rows,
    )
    seed_tvd = ", ".join(f"k={e['k']}: {e['tvd_seed']:.3f}" for e in agree["per_k"])

    pool_counts = source_count(sources)
    order = sorted(pool_counts, key=lambda s: -pool_counts[s])
    comp_rows: list[list[object]] = [
        [
            "pool",
            "—",
            len(sources),
            *[round(100 * pool_counts.get(s, 0) / len(sources), 1) for s in order],
            round(entropy(pool_counts), 3),
        ]
    ]
    for e in agree["per_k"]:
        for m in METHODS:
            for name in ("MiniLM", "static"):
                rows_ = e["picks"][m, name]
                counts = source_count(sources, rows_)
                comp_rows.append(
                    [
                        f"{m}, {name}",
                        e["k"],
                        len(rows_),
                        *[round(100 * counts.get(s, 0) / len(rows_), 1) for s in order],
                        round(entropy(counts), 3),
                    ]
                )
    comp_table = markdown_table(
        ["selection", "k", "rows", *[f"{s} %" for s in order], "entropy (nats)"], comp_rows
    )
    notes = "\n".join(f"- {n}" for n in agree["notes"]) or "- none"

    print(speed_table)
    print()
    print(agree_table)
    print()
    print(tvd_table)
    print()
    print(comp_table)
    return f"""
`{args.pool.name}` ({n_pool:,} valid rows), user view. MiniLM is `get_encoder("minilm")`
(all-MiniLM-L6-v2; texts longer than its window are chunked and mean-pooled), static is
`get_encoder("static")` (model2vec distilled from the same MiniLM, 256 dimensions, every
token of a text kept); batch size {args.batch_size} for both, as `kmq select` uses them.
CPU only. Static model: `{static_name}`.

## Throughput

{n_sample:,} texts sampled with seed {args.seed}, {speed["n_tokens"]:,} MiniLM word-piece tokens
(no special tokens; the static model uses the same vocabulary, and both encode every token:
MiniLM in windows). Both encoders loaded and warmed up on 64 texts; each run encodes all sampled
texts with both, in blocks of {args.block} texts, MiniLM and static back to back with the order
alternating block by block; the encoders are called directly (no cache). Median of
{args.repeats} runs.

{speed_table}

Static / MiniLM: **{speed["ratio"]:.1f}×** (median runs; fastest runs
{speed["ratio_best"]:.1f}×), which {verdict} the ≥ {SPEEDUP_TARGET:.0f}× target.

{full}

## Agreement of the clusterings and selections

Full-pool embeddings of both from the embedding cache (`embed_cached`). For each k, one
k-means per encoder (`kmq.pipeline.cluster`, seed {args.seed}); ARI and NMI (arithmetic
normalisation) between the two labelings, computed with {agree["metric"]}. Then
{agree["budget"]:,} rows ({100 * frac:.1f}%) selected from each encoder's own clustering with
kMQ (balanced allocation; no quality score, so uniform draws within each cluster) and with
km-closest (the rows nearest each centre), seed {args.seed}. Jaccard = |A ∩ B| / |A ∪ B| of the
picked rows; two independent uniform draws of this size would give about
{frac / (2 - frac):.3f}. The seed vs seed+1 column is kMQ on MiniLM's clustering drawn twice:
the overlap that kMQ's random draws alone leave.

{agree_table}

How similarly the two selections spread over the clusters: the total variation distance
(½ Σ |p − q|, 0 = same allocation, 1 = disjoint clusters) between the distributions of the
MiniLM selection's and the static selection's rows over one encoder's clusters, next to each
selection against the pool (what a uniform random sample would be close to). For reference, kMQ
on MiniLM's clustering with seed vs seed+1 (same quotas, new draws): {seed_tvd}.

{tvd_table}

## Source composition of the selections (% of rows)

{comp_table}

Notes the selectors returned:

{notes}
"""


def shown(path: Path) -> str:
    """``path`` relative to the repository (``../`` for the data folder beside it) if it can be."""
    full = path.resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if full.is_relative_to(base):
            return prefix + str(full.relative_to(base))
    return str(path)


def parse_ks(text: str) -> list[int]:
    ks = [int(v) for v in text.split(",") if v.strip()]
    if not ks or min(ks) < 2:
        raise argparse.ArgumentTypeError(f"--ks needs integers >= 2, got {text!r}")
    return ks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix.jsonl.gz")
    parser.add_argument("--n", type=int, default=2000, help="texts in the timed sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encode batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block", type=int, default=250, help="texts per alternating block")
    parser.add_argument("--ks", type=parse_ks, default=[64, 256, 1024])
    parser.add_argument("--budget", type=float, default=0.05, help="fraction of the pool")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--allow-embed",
        action="store_true",
        help="embed the pool with MiniLM when its embeddings are not cached (slow)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--name", default="static_encoder", help="report file name (no suffix)")
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()

    from kmq.cache import embed_cached
    from kmq.encoders import get_encoder

    all_texts, raw_sources = pool_texts(args.pool, VIEW)
    sources = [s if s is not None else "(none)" for s in raw_sources]
    minilm = get_encoder("minilm", batch_size=args.batch_size, show_progress=False)
    cached, path, partial = minilm_cache_state(all_texts, minilm, args.cache_dir)
    if not cached and not args.allow_embed:
        state = f"partly there: {partial}" if partial else "not started"
        cache = shown(args.cache_dir)
        sys.exit(
            f"MiniLM embeddings of {args.pool.name} ({len(all_texts):,} rows, view {VIEW}) are "
            f"not in the cache yet: {shown(path)} is missing ({state}). Wait for the run that "
            f"fills {cache} (e.g. `kmq select {shown(args.pool)} --cache-dir {cache}`) to "
            "finish, or pass --allow-embed to embed them here (slow)."
        )
    # The distilled model lives in the default cache (~/.cache/kmq), distilled once if missing;
    # its name (hence the embedding cache key) does not depend on where it is kept.
    static = get_encoder("static", batch_size=args.batch_size, show_progress=False)

    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(all_texts), size=min(args.n, len(all_texts)), replace=False)
    texts = [all_texts[i] for i in sample]
    speed = throughput(minilm, static, texts, all_texts, args)

    embs: dict[str, np.ndarray] = {}
    for name, encoder in (("MiniLM", minilm), ("static", static)):
        x, hit = embed_cached(
            all_texts, encoder, view=VIEW, cache_dir=args.cache_dir, show_progress=True
        )
        log.info("%s embeddings %s (%s)", name, x.shape, "cache" if hit else "computed")
        embs[name] = x
    agree = agreement(embs, sources, args)

    body = report(speed, agree, sources, len(texts), len(all_texts), static.name, args)
    total = time.perf_counter() - started
    title = f"Static encoder vs MiniLM on {args.pool.name}"
    write_report(args.out, args.name, title, body, total)
    plot(speed, agree, args.out, args.name)


if __name__ == "__main__":
    main()
