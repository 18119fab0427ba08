"""The full ``kmq select`` on a real pool, once per method, each as its own ``kmq`` process.

Every run is a subprocess of the ``kmq`` CLI, so its stage timings (``timings_s``) and peak
memory (``peak_rss_mb``) in ``manifest.json`` are its own. kmq runs first and pays the
embedding (if the cache is cold); random, km-random, km-closest and k-center reuse the cache.
By default the km-* runs get the k that kmq chose by silhouette (``--k <k>``) instead of
re-running the silhouette grid (``--km-k auto`` re-runs it).

    python benchmarks/select_full.py --budget 0.05
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BENCH_DIR,
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    REPO,
    command_line,
    log,
    markdown_table,
    save_figure,
    setup_logging,
    write_report,
)

from kmq.outputs import Manifest

METHODS = ["kmq", "random", "km-random", "km-closest", "k-center"]
CLUSTERED = {"kmq", "km-random", "km-closest"}
COMPOSITION_ORDER = ["pool", "random", "km-random", "km-closest", "k-center", "kmq"]


def kmq_executable() -> Path:
    beside = Path(sys.executable).parent / "kmq"
    return beside if beside.exists() else REPO / ".venv" / "bin" / "kmq"


def run_select(method: str, args: argparse.Namespace, k: int | str) -> dict[str, Any]:
    """One ``kmq select`` process; its manifest plus the wall time seen from outside."""
    out = args.work / method
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(kmq_executable()),
        "select",
        str(args.pool),
        "--budget",
        str(args.budget),
        "--method",
        method,
        "--seed",
        str(args.seed),
        "--k",
        str(k),
        "--cache-dir",
        str(args.cache_dir),
        "--out",
        str(out),
    ]
    log_path = args.work / f"{method}.log"
    log.info("running %s  (log: %s)", " ".join(cmd), log_path)
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, cwd=REPO)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"kmq select --method {method} failed ({proc.returncode}); see {log_path}")
    manifest = Manifest.read(out)
    log.info(
        "%s done in %.1f s: %s, peak %.0f MB",
        method,
        wall,
        manifest.timings_s,
        manifest.peak_rss_mb,
    )
    return {"wall": wall, "manifest": manifest.to_dict(), "command": cmd}


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every method in turn, kmq first; km-* get kmq's k unless ``--km-k auto``."""
    args.work.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    methods.sort(key=lambda m: m != "kmq")
    runs: dict[str, dict[str, Any]] = {}
    chosen_k: int | None = None
    for method in methods:
        k: int | str = "auto"
        if method in CLUSTERED and method != "kmq" and args.km_k == "reuse" and chosen_k:
            k = chosen_k
        run = run_select(method, args, k)
        runs[method] = {"wall": run["wall"], "command": run["command"], "k_arg": k}
        if method == "kmq":
            chosen_k = run["manifest"]["clusters"]["k"]
    return runs


def cache_state(manifest: dict[str, Any]) -> str:
    embedding = manifest.get("embedding")
    if embedding is None:
        return "not embedded"
    return "hit" if embedding["cache_hit"] else "cold (computed)"


def composition(counts: dict[str, int], sources: list[str]) -> list[float]:
    total = sum(counts.values()) or 1
    return [100 * counts.get(s, 0) / total for s in sources]


def entropy(counts: dict[str, int]) -> float:
    p = np.array([v for v in counts.values() if v > 0], dtype=np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def plot(
    names: list[str], shares: list[list[float]], sources: list[str], out: Path, name: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    pos = np.arange(len(names))
    left = np.zeros(len(names))
    colors = plt.get_cmap("tab10").colors
    for j, source in enumerate(sources):
        widths = np.array([row[j] for row in shares])
        ax.barh(pos, widths, left=left, color=colors[j % 10], label=source)
        left += widths
    ax.set_yticks(pos, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of rows")
    ax.set_title("source composition: pool vs 5% selections", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    save_figure(fig, out, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix.jsonl.gz")
    parser.add_argument("--budget", default="0.05", help="a count or a fraction, as kmq takes it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated; kmq (if listed) always runs first",
    )
    parser.add_argument(
        "--km-k",
        choices=["reuse", "auto"],
        default="reuse",
        help="k for km-random/km-closest: the k kmq chose (reuse) or auto",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--work",
        type=Path,
        default=BENCH_DIR / "out" / "select",
        help="where each run's --out folder and log go",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--name", default="select_full", help="report file name (no suffix)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from --work (runs.json and each run's manifest), run nothing",
    )
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()

    runs_path = args.work / "runs.json"
    if args.report_only:
        saved = json.loads(runs_path.read_text(encoding="utf-8"))
        runs, total, command = saved["runs"], saved["total_s"], saved["command"]
    else:
        runs = run_all(args)
        total, command = time.perf_counter() - started, command_line()
        saved = {"runs": runs, "total_s": total, "command": command}
        runs_path.write_text(json.dumps(saved, indent=1), "utf-8")
    for method, run in runs.items():
        run["manifest"] = Manifest.read(args.work / method).to_dict()
    chosen_k = runs["kmq"]["manifest"]["clusters"]["k"] if "kmq" in runs else None
    stages = list(dict.fromkeys(s for run in runs.values() for s in run["manifest"]["timings_s"]))

    timing_rows = []
    for method, run in runs.items():
        m = run["manifest"]
        t = m["timings_s"]
        clusters = m.get("clusters") or {}
        timing_rows.append(
            [
                method,
                f"{clusters.get('k', '—')} ({run['k_arg']})" if clusters else "—",
                cache_state(m),
                *[round(t.get(s, 0.0), 1) for s in stages],
                round(sum(t.get(s, 0.0) for s in stages), 1),
                round(run["wall"], 1),
                round(m["peak_rss_mb"]),
                m["counts"]["selected"],
                m["counts"]["shortfall"],
            ]
        )
    timing_table = markdown_table(
        [
            "method",
            "k (--k)",
            "embedding cache",
            *[f"{s} s" for s in stages],
            "stages s",
            "process wall s",
            "peak RSS MB",
            "selected",
            "shortfall",
        ],
        timing_rows,
    )

    first = next(iter(runs.values()))["manifest"]
    pool_counts = first["sources"]["pool"]
    sources = sorted(pool_counts, key=lambda s: -pool_counts[s])
    names, shares, comp_rows = [], [], []
    for name in COMPOSITION_ORDER:
        if name == "pool":
            counts = pool_counts
        elif name in runs:
            counts = runs[name]["manifest"]["sources"]["selected"]
        else:
            continue
        share = composition(counts, sources)
        names.append(name)
        shares.append(share)
        comp_rows.append(
            [name, sum(counts.values()), *[f"{v:.1f}" for v in share], f"{entropy(counts):.3f}"]
        )
    comp_table = markdown_table(
        ["", "rows", *[f"{s} %" for s in sources], "entropy (nats)"], comp_rows
    )

    sil_table = ""
    if "kmq" in runs:
        clusters = runs["kmq"]["manifest"]["clusters"]
        sil = clusters.get("silhouette") or {}
        sil_table = markdown_table(
            ["k", "silhouette", ""],
            [
                [int(k), f"{s:.4f}", "chosen" if int(k) == clusters["k"] else ""]
                for k, s in sorted(sil.items(), key=lambda kv: int(kv[0]))
            ],
        )

    print(timing_table)
    print()
    print(comp_table)
    print()
    print(sil_table)
    kmq_cold = "kmq" in runs and cache_state(runs["kmq"]["manifest"]) == "cold (computed)"
    k_note = (
        f"km-random and km-closest were given `--k {chosen_k}`, the k kmq chose by silhouette "
        "(their `cluster` stage is one k-means fit, not the grid)."
        if args.km_k == "reuse" and chosen_k
        else "km-* chose k themselves (`--k auto`)."
    )
    commands = "\n".join(
        " ".join(run["command"]).replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")
        for run in runs.values()
    )
    body = f"""
`kmq select {args.pool.name} --budget {args.budget} --seed {args.seed}` with default settings
(k auto by silhouette, balanced allocation, MiniLM user view), one `kmq` process per method,
in this order: {", ".join(runs)}. The kmq run's embedding cache was
**{"cold: it computed the embeddings" if kmq_cold else "already warm"}**; the others read the
cache (random does not embed at all). {k_note} k-center does not cluster.
Stage times and peak RSS are from each run's `manifest.json`; "process wall" is measured from
outside (includes interpreter start and imports).

## (a) Time per stage and peak memory

{timing_table}

## (b) Source composition (% of rows)

{comp_table}

## Silhouette grid of the kmq run (`clusters.silhouette`)

{sil_table}

## Runs

```
{commands}
```
"""
    if args.report_only:
        body += (
            f"\n(Report rebuilt at {time.strftime('%Y-%m-%d %H:%M')} with `--report-only` from "
            f"`{args.work.name}/runs.json` and the runs' manifests; the runs are unchanged.)\n"
        )
    title = f"Full `kmq select` on {args.pool.name}"
    write_report(args.out, args.name, title, body, total, command)
    plot(names, shares, sources, args.out, args.name)


if __name__ == "__main__":
    main()
