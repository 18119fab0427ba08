"""kmq's k-means against the official code's configuration, on MiniLM embeddings of a real pool.

Ours is ``kmq.clustering.kmeans(x, k, seed=s)`` with kmq's defaults (faiss); the official
configuration is ``faiss.Kmeans(d, k, niter=300, nredo=5, seed=s)``. Both get the same
L2-normalised vectors; both are timed from the call to the assignment of every row (train +
nearest-centre search), alternately, in one process. The objective is recomputed the same way
for both: every row to its nearest centre, sum of squared L2 distances, in float64.

    python benchmarks/clustering.py --ks 256,1024 --repeats 1 --repeats-ours 3

``--vectors FILE.npy`` reads the pool's MiniLM vectors (torch backend, user view, pool order)
from a file instead of the embedding cache (embedding mix-small with torch takes about an hour
on 2 busy cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    log,
    markdown_table,
    pool_texts,
    save_figure,
    setup_logging,
    write_report,
)

OBJECTIVE_TARGET = 1.01
TIME_TARGET = 1 / 20


def objective(x: np.ndarray, centroids: np.ndarray, block: int = 4096) -> float:
    """Σ over rows of the squared L2 distance to the nearest centroid, in float64."""
    c = np.asarray(centroids, dtype=np.float64)
    c_sq = (c**2).sum(1)
    total = 0.0
    for start in range(0, len(x), block):
        xb = np.asarray(x[start : start + block], dtype=np.float64)
        nearest = np.argmin(c_sq[None, :] - 2.0 * (xb @ c.T), axis=1)
        total += float(((xb - c[nearest]) ** 2).sum())
    return total


@contextmanager
def recording_kmeans() -> Iterator[list[Any]]:
    """Every ``faiss.Kmeans`` built inside the block (to read kmq's iteration stats)."""
    import faiss

    made: list[Any] = []
    original = faiss.Kmeans

    class Recording(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    faiss.Kmeans = Recording
    try:
        yield made
    finally:
        faiss.Kmeans = original


def init_name(value: int) -> str:
    import faiss

    names = [n for n in dir(faiss) if n.startswith("ClusteringInitMethod_")]
    found = [n.removeprefix("ClusteringInitMethod_") for n in names if getattr(faiss, n) == value]
    return found[0] if found else str(value)


def fit_ours(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """Centroids and the iterations faiss reports having run inside kmq's kmeans()."""
    from kmq.clustering import kmeans

    with recording_kmeans() as made:
        centroids = kmeans(x, k, seed=seed).centroids_
    cp = made[-1].cp
    OURS_SETTINGS.update(niter=cp.niter, nredo=cp.nredo, init=init_name(cp.init_method))
    PER_K[k] = (int(cp.afkmc2_chain_length), float(cp.early_stop_threshold))
    return centroids, len(made[-1].iteration_stats)


def fit_official(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """Centroids and the iterations faiss reports having run (all redos together)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=300, nredo=5, seed=seed)
    km.train(x)
    km.index.search(x, 1)  # the assignment, as ours does inside kmeans()
    return np.asarray(km.centroids), len(km.iteration_stats)


def fit_previous(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """kmq's k-means before the per-k seeding settings: AFK-MC² with faiss' chain of 50 and
    all 10 Lloyd steps at every k, then the assignment of every row."""
    import faiss

    from kmq.clustering import assign

    km = faiss.Kmeans(
        x.shape[1], k, niter=10, seed=seed, init_method=faiss.ClusteringInitMethod_AFK_MC2
    )
    km.cp.min_points_per_centroid = 1
    km.train(x)
    assign(x, km.centroids)
    return np.asarray(km.centroids), len(km.iteration_stats)


OURS_SETTINGS: dict[str, Any] = {}
PER_K: dict[int, tuple[int, float]] = {}  # k → (AFK-MC² chain length, early-stop threshold)
FITS = {"ours": fit_ours, "previous": fit_previous, "official": fit_official}


def run_k(x: np.ndarray, k: int, seed: int, repeats: dict[str, int]) -> dict[str, object]:
    """Alternating timed fits of both configurations at one k."""
    seconds: dict[str, list[float]] = {name: [] for name in FITS}
    objectives: dict[str, list[float]] = {name: [] for name in FITS}
    iterations: dict[str, int] = {}
    for r in range(max(repeats.values())):
        order = [name for name in FITS if r < repeats[name]]
        for name in order if r % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            centroids, iterations[name] = FITS[name](x, k, seed)
            seconds[name].append(time.perf_counter() - started)
            objectives[name].append(objective(x, centroids))
            log.info(
                "k=%d %s run %d: %.2f s, objective %.3f",
                k,
                name,
                r + 1,
                seconds[name][-1],
                objectives[name][-1],
            )
    return {"seconds": seconds, "objectives": objectives, "iterations": iterations}


STEPS = (3, 4, 5, 6)


def steps_needed(
    x: np.ndarray, ks: list[int], seed: int, official: dict[int, float]
) -> dict[int, dict[int, float]]:
    """Objective ratio to the official one after each of :data:`STEPS` Lloyd steps from kmq's
    seeding at every k (untimed)."""
    import faiss

    from kmq.clustering import seeding_settings

    out: dict[int, dict[int, float]] = {}
    for k in ks:
        out[k] = {}
        for n in STEPS:
            km = faiss.Kmeans(
                x.shape[1], k, niter=n, seed=seed, init_method=faiss.ClusteringInitMethod_AFK_MC2
            )
            km.cp.min_points_per_centroid = 1
            km.cp.afkmc2_chain_length = seeding_settings(k)[0]
            km.train(x)
            out[k][n] = objective(x, km.centroids) / official[k]
    return out


def plot(rows: list[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [str(r["k"]) for r in rows]
    pos = np.arange(len(rows))
    fig, (ax_t, ax_o) = plt.subplots(1, 2, figsize=(8, 3.2))
    ours = f"ours (niter {OURS_SETTINGS['niter']}, nredo {OURS_SETTINGS['nredo']})"
    ax_t.bar(pos - 0.2, [r["ours_s"] for r in rows], 0.4, label=ours)
    ax_t.bar(pos + 0.2, [r["official_s"] for r in rows], 0.4, label="official (niter 300, nredo 5)")
    for p, r in zip(pos, rows, strict=True):
        ax_t.annotate(
            f"×{r['time_ratio']:.3f}", (p, r["official_s"]), ha="center", va="bottom", fontsize=8
        )
    ax_t.set_yscale("log")
    ax_t.set_xticks(pos, [f"k={k}" for k in ks])
    ax_t.set_ylabel("wall time (s, log)")
    ax_t.set_title("k-means time", fontsize=10)
    ax_t.legend(fontsize=7)
    ratios = [r["objective_ratio"] for r in rows]
    ax_o.bar(pos, ratios, 0.5, color="tab:green")
    ax_o.axhline(OBJECTIVE_TARGET, color="tab:red", ls="--", lw=1, label="target 1.01")
    ax_o.axhline(1.0, color="black", lw=0.8)
    ax_o.set_ylim(min(0.99, *ratios) - 0.005, max(OBJECTIVE_TARGET, *ratios) + 0.01)
    ax_o.set_xticks(pos, [f"k={k}" for k in ks])
    ax_o.set_ylabel("objective ours / official")
    ax_o.set_title("k-means objective ratio", fontsize=10)
    ax_o.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, "clustering")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--ks", default="256,1024", help="comma-separated k values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed fits of the official config")
    parser.add_argument("--repeats-ours", type=int, default=3, help="timed fits of ours")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--vectors", type=Path, help="the pool's vectors (.npy, pool order)")
    parser.add_argument("--threads", type=int, help="faiss threads (default: one per core)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()

    import faiss

    from kmq.cache import embed_cached

    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    from kmq.clustering import normalize
    from kmq.encoders.sentence_transformers import SentenceTransformerEncoder

    texts, _ = pool_texts(args.pool, "user")
    encoder = SentenceTransformerEncoder("minilm", backend="torch", show_progress=False)
    t0 = time.perf_counter()
    if args.vectors is not None:
        emb, source = np.load(args.vectors), f"read from `{args.vectors.name}`"
        if len(emb) != len(texts):
            raise SystemExit(f"{args.vectors} has {len(emb)} rows; the pool has {len(texts)}")
    else:
        emb, hit = embed_cached(texts, encoder, view="user", cache_dir=args.cache_dir)
        source = "from the cache" if hit else "computed"
    embed_s = time.perf_counter() - t0
    x = normalize(np.asarray(emb))
    log.info("%d × %d embeddings (%s, %.1f s)", *x.shape, source, embed_s)

    rows = []
    spread = []
    iters: list[list[object]] = []
    for k in (int(v) for v in args.ks.split(",")):
        repeats = {"ours": args.repeats_ours, "previous": args.repeats_ours}
        res = run_k(x, k, args.seed, repeats | {"official": args.repeats})
        sec, obj = res["seconds"], res["objectives"]
        ours_s, off_s = statistics.median(sec["ours"]), statistics.median(sec["official"])
        ours_o, off_o = obj["ours"][0], obj["official"][0]
        rows.append(
            {
                "k": k,
                "ours_obj": ours_o,
                "official_obj": off_o,
                "objective_ratio": ours_o / off_o,
                "ours_s": ours_s,
                "official_s": off_s,
                "time_ratio": ours_s / off_s,
                "previous_ratio": obj["previous"][0] / off_o,
                "previous_time_ratio": statistics.median(sec["previous"]) / off_s,
                "ours_iter": res["iterations"]["ours"],
                "official_iter": res["iterations"]["official"],
            }
        )
        spread.append(
            f"- k={k}: ours times {', '.join(f'{s:.2f}' for s in sec['ours'])} s, "
            f"objectives {', '.join(f'{o:.3f}' for o in obj['ours'])}; previous times "
            f"{', '.join(f'{s:.2f}' for s in sec['previous'])} s, objective "
            f"{obj['previous'][0]:.3f}; official times "
            f"{', '.join(f'{s:.1f}' for s in sec['official'])} s, objectives "
            f"{', '.join(f'{o:.3f}' for o in obj['official'])}"
        )
        iters.append(
            [
                k,
                PER_K[k][0],
                PER_K[k][1],
                res["iterations"]["ours"],
                f"{1000 * ours_s / res['iterations']['ours']:.1f}",
                res["iterations"]["official"],
                f"{1000 * off_s / res['iterations']['official']:.1f}",
            ]
        )

    headers = [
        "k",
        "ours objective",
        "official objective",
        "objective ratio (≤ 1.01)",
        "ours s",
        "official s",
        "time ratio (≤ 0.05)",
        "previous: objective / time ratio",
    ]
    table = markdown_table(
        headers,
        [
            [
                r["k"],
                f"{r['ours_obj']:.3f}",
                f"{r['official_obj']:.3f}",
                f"{r['objective_ratio']:.4f}",
                round(r["ours_s"], 2),
                round(r["official_s"], 1),
                f"{r['time_ratio']:.4f} (1/{1 / r['time_ratio']:.0f})",
                f"{r['previous_ratio']:.4f} / 1/{1 / r['previous_time_ratio']:.0f}",
            ]
            for r in rows
        ],
    )
    print(table)
    iter_table = markdown_table(
        [
            "k",
            "ours AFK-MC² chain",
            "ours early stop",
            "ours iterations",
            "ours ms/iter",
            "official iterations",
            "official ms/iter",
        ],
        iters,
    )
    print()
    print(iter_table)
    official_objective = {int(r["k"]): float(r["official_obj"]) for r in rows}
    steps = steps_needed(x, list(official_objective), args.seed, official_objective)
    steps_table = markdown_table(
        ["k", *(f"{n} steps" for n in STEPS), "official iterations / 20"],
        [
            [r["k"], *(f"{steps[r['k']][n]:.4f}" for n in STEPS), f"{r['official_iter'] / 20:.1f}"]
            for r in rows
        ],
    )
    verdicts = []
    for r in rows:
        obj_ok = "meets" if r["objective_ratio"] <= OBJECTIVE_TARGET else "MISSES"
        time_ok = "meets" if r["time_ratio"] <= TIME_TARGET else "MISSES"
        verdicts.append(
            f"- k={r['k']}: objective {obj_ok} the ≤ 1.01 target; time {time_ok} the ≤ 1/20 target"
        )
    import faiss

    faiss_version = faiss.__version__
    official_iters = " and ".join(f"{r['official_iter']} (k={r['k']})" for r in rows)
    body = f"""
Pool `{args.pool.name}`: {x.shape[0]:,} rows, user view, MiniLM ({encoder.name}),
{x.shape[1]}-d, L2-normalised; embeddings {source}
({embed_s:.1f} s). Seed {args.seed}.

- **ours**: `kmq.clustering.kmeans(x, k, seed={args.seed})` with kmq's defaults as installed
  (faiss; read back from the faiss object it built: niter={OURS_SETTINGS["niter"]},
  nredo={OURS_SETTINGS["nredo"]}, init={OURS_SETTINGS["init"]}), median of
  {args.repeats_ours} fits.
- **official**: `faiss.Kmeans(d, k, niter=300, nredo=5, seed={args.seed})` (faiss defaults
  otherwise), median of {args.repeats} fit(s).
- **previous**: kmq's k-means before per-k seeding settings (AFK-MC² with faiss' chain of
  50, all 10 Lloyd steps at every k), median of {args.repeats_ours} fits.
- Time of each = fit + assignment of every row (index search), same process, alternating order,
  faiss on {threads} thread(s).
- Objective = Σ squared L2 distance of every row to its nearest centroid, recomputed in float64
  from the returned centroids for both (first run of each; same seed every run).

{table}

{chr(10).join(verdicts)}

Ours per k (`kmq.clustering.seeding_settings`): the AFK-MC² chain length and the early-stop
threshold (a Lloyd step improving the objective by less than this fraction ends the fit; 0 =
run all `niter`). Iterations actually run (faiss' `iteration_stats`, all redos together) and
wall time per iteration (fit + assignment time / iterations, seeding included for ours):

{iter_table}

faiss {faiss_version} stops a redo early once the objective stops improving
(`ClusteringParameters.early_stop_threshold`, default 0.0), so `niter` is a cap, not a count:
the official configuration runs {official_iters} iterations here, not 5 × 300 = 1500 as on the
faiss versions without early stopping. The time target (≤ 1/20) is measured against this
cheaper baseline.

Why k=1024 stays above 1/20: one Lloyd step of ours costs what one iteration of the official
configuration costs (the same full pass of every row against every centre), so 1/20 of the
official time is its iteration count / 20 passes, and ours spends passes on the seeding and on
the final assignment besides its Lloyd steps. Objective ratio to the official one after a
fixed number of Lloyd steps from kmq's seeding (no early stop), seed {args.seed}:

{steps_table}

Every run:

{chr(10).join(spread)}
"""
    total = time.perf_counter() - started
    write_report(args.out, "clustering", "k-means: kmq vs the official configuration", body, total)
    plot(rows, args.out)


if __name__ == "__main__":
    main()
