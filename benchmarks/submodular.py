"""kmq's lazy-greedy QDIT / facility location against apricot-select and the official QDIT loop.

Data: MiniLM ("user" view) embeddings of ``mix.jsonl.gz``, a seeded subsample of n rows (the
10k sample is the first 10k of the 50k sample's permutation). Quality: log(1 + characters of
the last assistant turn) (kmq's ``length`` scorer, log-compressed), min-max normalised to q̃ in
[0, 1]. The α of this benchmark is the scale-free share a of kmq ≤ 0.1.0 (F below); our
selector, which takes QDIT's own α, is given q̃ and ``alpha_from_share(a, n, b, 1)``, which
picks the same rows.

(a) Objective and wall time, in one process, one run per cell:
  - ours: ``QDITSelector(alpha, n_neighbors=k).select(x, b, quality=q)`` (α = 0 and 0.5) and
    ``FacilityLocationSelector(n_neighbors=k)``, timed end to end (k-NN graph included) and
    the optimizer alone, with k = 50 (the default) and with k scaled to the budget,
    ceil(8 · n / b).
  - apricot sparse: ``FacilityLocationSelection(b, metric="precomputed", optimizer="lazy")``
    on kmq's k = 50 graph as a precomputed CSR (row c = the rows c covers, sim(x, c)) — the
    objective ours maximises with k = 50. For α = 0.5 the matrix gets one extra column per
    row c holding α·q̃(c)/b (and (1 − α)/n on the similarities), which makes apricot's
    facility location equal QDIT's F exactly. The time includes building the graph (faiss)
    and the CSR.
  - dense references (n <= --dense-max): for α = 0 apricot's same class on the dense matrix
    max(0, cos) (float64; the time includes building it); for α = 0.5 the official QDIT
    algorithm of (b), vectorised, run to the full budget.
  Every selection is scored the same way: the DENSE objective, F = (1 − α)·f(S)/n + α·mean
  q̃(S), with f(S) = Σ_x max_{s∈S} max(0, cos(x, s)) computed exactly in float64 blocks.

(b) The official QDIT algorithm — every step evaluates F(S ∪ {c}) for every candidate c over all
  n points (dense clipped cosine), O(n²) per step — on a 2k subsample for a few steps, both as
  a Python loop over candidates (as written) and as one vectorised numpy pass per step. Its
  cost is extrapolated as  T(n, b) = b · t_step(2k) · (n / 2k)², since a step touches
  n candidates × n points; compared with ours measured at (n, b). Equal objective: on the 2k
  sample ours with a dense graph (n_neighbors = n) must make exactly the official picks.

    python benchmarks/submodular.py --sizes 10000,50000 --budgets 0.01,0.05
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    log,
    markdown_table,
    save_figure,
    setup_logging,
    write_report,
)
from scipy.sparse import csr_matrix

from kmq.clustering import normalize
from kmq.knn import KnnGraph, knn_graph
from kmq.selectors.qdit import FacilityLocationSelector, QDITSelector, alpha_from_share
from kmq.selectors.submodular import lazy_greedy

OBJECTIVE_TARGET = 0.999
SPEEDUP_TARGET = 100.0
BLOCK = 4096


def load(pool: Path, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings (user view) of every valid row, and log(1 + response characters)."""
    from kmq.cache import embed_cached
    from kmq.encoders import get_encoder
    from kmq.formats import load_pool
    from kmq.quality.heuristics import LengthScorer

    examples = load_pool(pool).examples
    texts = [ex.text("user") for ex in examples]
    started = time.perf_counter()
    x, hit = embed_cached(
        texts, get_encoder("minilm", show_progress=False), view="user", cache_dir=cache_dir
    )
    log.info(
        "%d embeddings (%s) in %.0f s",
        len(x),
        "cached" if hit else "computed",
        time.perf_counter() - started,
    )
    return np.asarray(x), np.log1p(LengthScorer().score(examples))


def coverage(x: np.ndarray, picks: np.ndarray) -> float:
    """Dense f(S)/n: mean over rows of max(0, max_{s∈S} cos(x, s)), float64, blocked."""
    s = x[picks].astype(np.float64)
    total = 0.0
    for start in range(0, len(x), BLOCK):
        sims = x[start : start + BLOCK].astype(np.float64) @ s.T
        total += float(np.maximum(sims.max(axis=1), 0.0).sum())
    return total / len(x)


def normalized(quality: np.ndarray) -> np.ndarray:
    """q̃ = (q − min) / (max − min), in [0, 1]."""
    return (quality - quality.min()) / (quality.max() - quality.min())


def dense_objective(x: np.ndarray, picks: np.ndarray, q: np.ndarray, alpha: float) -> float:
    return (1 - alpha) * coverage(x, picks) + alpha * float(q[picks].mean())


@dataclass
class Run:
    """A selection, its end-to-end wall time, and the optimizer's share of it."""

    picks: np.ndarray
    total_s: float
    optimizer_s: float


class Clock:
    """Seconds since creation, or since the last ``lap``."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def apricot_fit(matrix: Any, budget: int) -> np.ndarray:
    from apricot import FacilityLocationSelection

    selector = FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy")
    return np.asarray(selector.fit(matrix).ranking, dtype=np.int64)


def apricot_dense(x: np.ndarray, budget: int) -> Run:
    """apricot on the dense max(0, cos) matrix (float64); total includes building it."""
    clock = Clock()
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.maximum(sims, 0.0, out=sims)
    build = clock.lap()
    picks = apricot_fit(sims, budget)
    fit = clock.lap()
    return Run(picks, build + fit, fit)


def qdit_csr(graph: KnnGraph, q: np.ndarray, alpha: float, budget: int) -> csr_matrix:
    """Row c: (1 − α)/n · sim(x, c) at column x for the rows x c covers; α·q̃(c)/b at n + c."""
    n = graph.n
    rev = graph.reverse()
    cols = [rev.points]
    data = [rev.similarities * (1 - alpha) / n]
    rows = np.repeat(np.arange(n), np.diff(rev.indptr))
    size = n
    if alpha > 0:
        rows = np.concatenate([rows, np.arange(n)])
        cols.append(n + np.arange(n))
        data.append(alpha * q / budget)
        size = 2 * n
    matrix = csr_matrix(
        (np.concatenate(data), (rows, np.concatenate(cols))), shape=(size, size), dtype=np.float64
    )
    matrix.indices = matrix.indices.astype(np.int32)
    matrix.indptr = matrix.indptr.astype(np.int32)
    return matrix


def apricot_sparse(
    graph: KnnGraph, graph_s: float, q: np.ndarray, alpha: float, budget: int
) -> Run:
    """apricot on our k-NN graph as a CSR; total includes the graph's (timed) build."""
    clock = Clock()
    matrix = qdit_csr(graph, q, alpha, budget)
    build = clock.lap()
    picks = apricot_fit(matrix, budget)
    fit = clock.lap()
    if picks.max() >= graph.n:
        raise RuntimeError("apricot picked a quality column's empty row (zero gain)")
    return Run(picks, graph_s + build + fit, fit)


def ours(x: np.ndarray, quality: np.ndarray, method: str, alpha: float, budget: int, k: int) -> Run:
    """Our selector end to end; the optimizer alone is timed again on a prebuilt graph."""
    n = len(x)
    q = normalized(quality)
    official_alpha = alpha_from_share(alpha, n=n, budget=budget, quality_range=1.0)
    selector = (
        FacilityLocationSelector(n_neighbors=k)
        if method == "facility-location"
        else QDITSelector(official_alpha, n_neighbors=k)
    )
    clock = Clock()
    picks = selector.select(x, budget, quality=q if alpha > 0 else None).indices
    total = clock.lap()
    reverse = knn_graph(x, k).reverse()
    bonus = official_alpha * q
    clock.lap()
    run = lazy_greedy(
        reverse, np.arange(n), budget, coverage_weight=1 - official_alpha, bonus=bonus
    )
    optimizer = clock.lap()
    if not np.array_equal(run.picks, picks):
        raise RuntimeError("lazy_greedy on the prebuilt graph picked differently from select()")
    return Run(picks, total, optimizer)


def official_qdit(
    x: np.ndarray, q: np.ndarray, alpha: float, budget: int, steps: int, *, vectorised: bool
) -> tuple[list[int], list[float]]:
    """The official algorithm: F(S ∪ {c}) over all n points for every candidate c, each step.

    Dense clipped cosine, float64. ``vectorised`` evaluates all candidates in one numpy pass
    per step (in row blocks), else a Python loop over candidates as written. Runs ``steps``
    greedy steps of a size-``budget`` selection; returns the picks and the seconds of every
    step (the similarity matrix is built before the clock starts).
    """
    n = len(x)
    sims = np.maximum(x.astype(np.float64) @ x.T.astype(np.float64), 0.0)
    cur = np.zeros(n)
    chosen: list[int] = []
    q_sum = 0.0
    seconds = []
    for _ in range(steps):
        clock = Clock()
        if vectorised:
            cover = np.concatenate(
                [np.maximum(sims[i : i + 1024], cur).sum(axis=1) for i in range(0, n, 1024)]
            )
            values = (1 - alpha) * cover / n + alpha * (q_sum + q) / budget
            values[chosen] = -np.inf
            best = int(np.argmax(values))
        else:
            best, best_value = -1, -np.inf
            for c in range(n):
                if c in chosen:
                    continue
                f_c = np.maximum(sims[c], cur).sum()
                value = (1 - alpha) * f_c / n + alpha * (q_sum + q[c]) / budget
                if value > best_value:
                    best, best_value = c, value
        chosen.append(best)
        cur = np.maximum(cur, sims[best])
        q_sum += q[best]
        seconds.append(clock.lap())
    return chosen, seconds


def references(
    x: np.ndarray, q: np.ndarray, budget: int, args: argparse.Namespace
) -> dict[tuple[str, float], Run]:
    """Reference selections, keyed by (name, alpha)."""
    clock = Clock()
    graph = knn_graph(x, args.k)
    graph_s = clock.lap()
    refs = {
        (f"apricot sparse k={args.k}", alpha): apricot_sparse(graph, graph_s, q, alpha, budget)
        for alpha in (0.0, 0.5)
    }
    if len(x) <= args.dense_max:
        refs["apricot dense", 0.0] = apricot_dense(x, budget)
        clock.lap()
        picks, steps = official_qdit(x, q, 0.5, budget, budget, vectorised=True)
        refs["official QDIT dense", 0.5] = Run(np.asarray(picks), clock.lap(), sum(steps))
    return refs


def compare(
    x: np.ndarray, quality: np.ndarray, budget: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Rows of table (a) for one (n, b): each of our runs against each reference of its α."""
    q = normalized(quality)
    refs = references(x, q, budget, args)
    k_scaled = min(len(x), int(np.ceil(args.k_per_share * len(x) / budget)))
    runs = [("facility-location", 0.0, args.k), ("qdit", 0.0, args.k), ("qdit", 0.5, args.k)]
    runs += [("facility-location", 0.0, k_scaled), ("qdit", 0.5, k_scaled)]
    out = []
    for method, alpha, k in runs:
        mine = ours(x, quality, method, alpha, budget, k)
        f_ours = dense_objective(x, mine.picks, q, alpha)
        for (name, ref_alpha), ref in refs.items():
            if ref_alpha != alpha:
                continue
            f_ref = dense_objective(x, ref.picks, q, alpha)
            out.append(
                {"n": len(x), "b": budget, "method": method, "alpha": alpha, "k": k,
                 "reference": name, "F_ours": f_ours, "F_ref": f_ref, "ratio": f_ours / f_ref,
                 "t_ours": mine.total_s, "t_ref": ref.total_s, "opt_ours": mine.optimizer_s,
                 "opt_ref": ref.optimizer_s,
                 "overlap": len(np.intersect1d(mine.picks, ref.picks)) / budget}
            )  # fmt: skip
            log.info("%s", out[-1])
    return out


def official_rows(
    x: np.ndarray, quality: np.ndarray, args: argparse.Namespace, table_a: list[dict[str, Any]]
) -> tuple[list[list[object]], list[str]]:
    """Table (b): the official loop timed on --official-n rows, extrapolated to every (n, b)."""
    n0, steps, budget0, alpha = len(x), args.official_steps, args.official_budget, 0.5
    q0 = normalized(quality)
    picks, per_step = {}, {}
    for vectorised in (False, True):
        picks[vectorised], seconds = official_qdit(
            x, q0, alpha, budget0, steps, vectorised=vectorised
        )
        per_step[vectorised] = float(np.median(seconds))
        log.info("official (vectorised=%s): %.4f s per step", vectorised, per_step[vectorised])
    official, _ = official_qdit(x, q0, alpha, budget0, budget0, vectorised=True)
    official_alpha = alpha_from_share(alpha, n=n0, budget=budget0, quality_range=1.0)
    dense_ours = QDITSelector(official_alpha, n_neighbors=n0).select(x, budget0, quality=q0)
    f_official = dense_objective(x, np.asarray(official), q0, alpha)
    f_dense = dense_objective(x, dense_ours.indices, q0, alpha)
    notes = [
        f"official loop, {n0} rows, α={alpha}, budget {budget0}: "
        f"{per_step[False]:.4f} s per step as a Python loop over candidates, "
        f"{per_step[True]:.4f} s per step vectorised (median of the first {steps} steps); both "
        f"make the same first {steps} picks: {picks[False] == picks[True]}",
        f"equal objective: ours with a dense graph (n_neighbors={n0}) on the same {n0} rows "
        f"makes the official {budget0} picks in the same order: "
        f"{dense_ours.indices.tolist() == official} (F ratio {f_dense / f_official:.6f})",
    ]
    dense = {
        (r["n"], r["b"], r["k"]): r for r in table_a if r["reference"] == "official QDIT dense"
    }
    rows: list[list[object]] = []
    for r in table_a:
        if (r["method"], r["alpha"]) != ("qdit", alpha) or not r["reference"].startswith(
            "apricot sparse"
        ):
            continue
        n, b, k = r["n"], r["b"], r["k"]
        scale = b * (n / n0) ** 2
        loop_s, vec_s = per_step[False] * scale, per_step[True] * scale
        ref = dense.get((n, b, k))
        rows.append(
            [n, b, k, round(ref["ratio"], 5) if ref else "—", round(loop_s), round(vec_s, 1),
             round(ref["opt_ref"], 1) if ref else "—", round(r["t_ours"], 2),
             round(loop_s / r["t_ours"]), round(vec_s / r["t_ours"], 1)]
        )  # fmt: skip
    return rows, notes


def figure(table_a: list[dict[str, Any]], out: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in table_a if r["method"] != "qdit" or r["alpha"] > 0]
    labels = [
        f"{r['n'] // 1000}k b={r['b']} {r['method']} α={r['alpha']:g} k={r['k']}"
        f"\nvs {r['reference']}"
        for r in rows
    ]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    ax.barh(pos - 0.2, [r["t_ours"] for r in rows], 0.4, label="kmq (lazy greedy, k-NN graph)")
    ax.barh(pos + 0.2, [r["t_ref"] for r in rows], 0.4, label="reference")
    ax.set_yticks(pos, labels, fontsize=5)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, "submodular")


def table_a_markdown(table_a: list[dict[str, Any]]) -> str:
    headers = [
        "n",
        "budget",
        "ours",
        "α",
        "k",
        "reference",
        "F ours",
        "F ref",
        "F ratio",
        "ours s",
        "ref s",
        "time ratio (ours/ref)",
        "ours optimizer s",
        "ref optimizer s",
        "same picks",
    ]
    rows = [
        [r["n"], r["b"], r["method"], r["alpha"], r["k"], r["reference"], round(r["F_ours"], 5),
         round(r["F_ref"], 5), round(r["ratio"], 5), round(r["t_ours"], 2), round(r["t_ref"], 2),
         round(r["t_ours"] / r["t_ref"], 3), round(r["opt_ours"], 3), round(r["opt_ref"], 3),
         f"{100 * r['overlap']:.1f}%"]
        for r in table_a
    ]  # fmt: skip
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix.jsonl.gz")
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--budgets", default="0.01,0.05", help="fractions of n")
    parser.add_argument("--k", type=int, default=50, help="n_neighbors (kmq's default)")
    parser.add_argument(
        "--k-per-share", type=float, default=8.0,
        help="the budget-scaled runs use n_neighbors = ceil(this * n / budget)",
    )  # fmt: skip
    parser.add_argument("--dense-max", type=int, default=10000, help="largest n for dense refs")
    parser.add_argument("--official-n", type=int, default=2000)
    parser.add_argument("--official-budget", type=int, default=20)
    parser.add_argument("--official-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()
    emb, quality = load(args.pool, args.cache_dir)
    sizes = [int(s) for s in args.sizes.split(",")]
    order = np.random.default_rng(args.seed).permutation(len(emb))[: max(sizes)]
    table_a: list[dict[str, Any]] = []
    for n in sizes:
        rows = np.sort(order[:n])
        x, q = normalize(emb[rows]), quality[rows]
        for fraction in (float(f) for f in args.budgets.split(",")):
            table_a += compare(x, q, max(1, round(fraction * n)), args)
    sample = np.sort(order[: args.official_n])
    rows_b, notes_b = official_rows(normalize(emb[sample]), quality[sample], args, table_a)
    figure(table_a, args.out)
    body = report_body(args, table_a, rows_b, notes_b, len(emb))
    total = time.perf_counter() - started
    write_report(args.out, "submodular", "Lazy-greedy QDIT and facility location", body, total)


def report_body(
    args: argparse.Namespace,
    table_a: list[dict[str, Any]],
    rows_b: list[list[object]],
    notes_b: list[str],
    pool_rows: int,
) -> str:
    def worst(pred: Callable[[dict[str, Any]], bool]) -> str:
        ratios = [r["ratio"] for r in table_a if pred(r)]
        if not ratios:
            return "—"
        flag = "met" if min(ratios) >= OBJECTIVE_TARGET else "MISSED"
        return f"{min(ratios):.5f} ({flag})"

    min_speedup = min((float(str(r[8])) for r in rows_b), default=float("nan"))
    n_max = max((int(str(r[0])) for r in rows_b), default=0)
    at_max = min((float(str(r[8])) for r in rows_b if r[0] == n_max), default=float("nan"))
    table_b = markdown_table(
        ["n", "budget", "ours k", "F ours / F official (dense, measured)",
         "official loop s (extrapolated)", "official vectorised s (extrapolated)",
         "official vectorised s (measured)", "ours s (measured)", "speed-up vs loop",
         "speed-up vs vectorised (extrapolated)"],
        rows_b,
    )  # fmt: skip
    doc = (__doc__ or "").split("\n\n    python")[0]
    return f"""
{doc}

Pool: {args.pool.name}, {pool_rows} valid rows; subsample seed {args.seed}; n_neighbors
{args.k} (kmq's default) and, in the budget-scaled runs, ceil({args.k_per_share:g} · n / b).

## (a) kmq vs apricot-select and the official loop — dense objective and wall time

Target: F ratio >= {OBJECTIVE_TARGET}. Worst F ratio against a reference on the same sparse
graph: {worst(lambda r: r["reference"].startswith("apricot sparse") and r["k"] == args.k)};
against a dense reference with k={args.k}:
{worst(lambda r: "dense" in r["reference"] and r["k"] == args.k)}; against a dense reference
with the budget-scaled k: {worst(lambda r: "dense" in r["reference"] and r["k"] != args.k)}.
"same picks" is the share of our picks that the reference also picked.

{table_a_markdown(table_a)}

Times: "ours s" is ``select()`` end to end, building its exact k-NN graph (faiss
IndexFlatIP) included; "ours optimizer s" is ``lazy_greedy`` alone, rerun on a prebuilt graph
(and checked to make the same picks). "ref s" for apricot sparse adds the faiss graph build,
the CSR assembly and ``fit``; for apricot dense, building the n×n matrix and ``fit``; for the
official QDIT, building its n×n matrix and its greedy loop. "ref optimizer s" is ``fit`` alone
(it includes one numba compilation: apricot builds its gain kernel inside every ``fit``) or
the official loop alone. Against apricot on the same graph, picks can differ where two rows
have exactly equal gains (the pool holds duplicate rows): ours takes the lower row index,
apricot another, and the runs diverge from there.

## (b) the official QDIT loop, extrapolated

T(n, b) = b · t_step({args.official_n}) · (n / {args.official_n})². Target: >= {SPEEDUP_TARGET:g}x
faster than the official algorithm (its loop). Smallest speed-up: {min_speedup:.0f}x
({"met" if min_speedup >= SPEEDUP_TARGET else "MISSED"}); smallest at n = {n_max}:
{at_max:.0f}x ({"met" if at_max >= SPEEDUP_TARGET else "MISSED"}). Ours costs one O(n²·d) graph
build plus a cheap greedy, the official loop O(n²) per pick: the speed-up grows with b.

{table_b}

{chr(10).join(f"- {note}" for note in notes_b)}
"""


if __name__ == "__main__":
    main()
