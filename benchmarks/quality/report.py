"""``quality_v1.md`` and ``quality_v1.png`` from the finished jobs of a grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from _common import markdown_table, save_figure, write_report
from harness import (
    MC_SUITES,
    NLL_SUITES,
    ORDERING,
    Grid,
    flat_metrics,
    metric_table,
    paired_differences,
    summarise,
)
from stats import ALPHA, LEVEL, PairedTest, Verdict, judge, paired_test

AGGREGATES = (("mean NLL", False), ("mean acc", True), ("held-out NLL", False))
"""The three summary metrics and whether higher is better."""


def cell(values: list[float] | None, digits: int = 3) -> str:
    if not values:
        return "—"
    summary = summarise(values)
    if math.isnan(summary.std):
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def main_table(table: dict[str, dict[str, list[float]]], suites: list[str]) -> str:
    base = table.get("base", {})
    random = table.get("random", {})
    headers = [
        "method",
        "seeds",
        *suites,
        "mean NLL ↓",
        "mean acc ↑",
        "held-out NLL ↓",
        "Δ mean NLL vs base",
        "Δ mean acc vs base",
        "mean NLL / random",
        "wall s per seed",
    ]
    rows = []
    for method, metrics in table.items():
        n = len(metrics.get("seconds", []))
        nll = metrics.get("mean NLL")
        acc = metrics.get("mean acc")
        d_nll = _delta(nll, base.get("mean NLL"))
        d_acc = _delta(acc, base.get("mean acc"))
        ratio = "—"
        if nll and random.get("mean NLL") and method != "random":
            ratio = f"{np.mean(nll) / np.mean(random['mean NLL']):.4f}"
        rows.append(
            [
                method,
                n,
                *[cell(metrics.get(s)) for s in suites],
                cell(nll),
                cell(acc),
                cell(metrics.get("held-out NLL")),
                d_nll,
                d_acc,
                ratio,
                f"{np.mean(metrics['seconds']):.0f}",
            ]
        )
    return markdown_table(headers, rows)


def _delta(values: list[float] | None, base: list[float] | None) -> str:
    if not values or not base:
        return "—"
    return f"{np.mean(values) - base[0]:+.4f}"


def holdout_table(table: dict[str, dict[str, list[float]]]) -> str:
    sources = sorted(
        {
            name.removeprefix("held-out ")
            for metrics in table.values()
            for name in metrics
            if name.startswith("held-out ") and name != "held-out NLL"
        }
    )
    headers = ["method", *sources]
    rows = [
        [method, *[cell(metrics.get(f"held-out {s}")) for s in sources]]
        for method, metrics in table.items()
    ]
    return markdown_table(headers, rows)


def ordering_table(results: list[dict[str, Any]], methods: set[str]) -> tuple[str, list[str]]:
    """The claimed ordering judged as one family: every (claim, metric) cell with at least two
    seeds is tested and Holm-corrected together (see :mod:`stats`)."""
    headers = ["claim (first beats second)"] + [
        f"{name} ({'higher' if up else 'lower'} is better)" for name, up in AGGREGATES
    ]
    claims = [(a, b) for a, b in ORDERING if a in methods and b in methods]
    cells: list[tuple[str, str, str]] = []
    tests: list[PairedTest] = []
    signs: list[int] = []
    for first, second in claims:
        for metric, up in AGGREGATES:
            diffs = paired_differences(results, first, second, metric)
            if diffs is not None:
                cells.append((first, second, metric))
                tests.append(paired_test(diffs))
                signs.append(1 if up else -1)
    judged = dict(zip(cells, judge(tests, signs), strict=True))
    rows = [
        [f"{first} > {second}"]
        + [
            verdict_cell(judged[first, second, metric])
            if (first, second, metric) in judged
            else "—"
            for metric, _ in AGGREGATES
        ]
        for first, second in claims
    ]
    verdicts = [f"{a} > {b} on {metric}: {v.verdict}" for (a, b, metric), v in judged.items()]
    return markdown_table(headers, rows), verdicts


def verdict_cell(v: Verdict) -> str:
    """Mean difference [95 % CI]; d_z [95 % CI]; Holm-adjusted p (n): **verdict**."""
    t = v.test
    if t.undefined is not None:
        return f"{t.mean:+.4f} (n={t.n}): **{v.verdict}**"
    d_z_ci = "n/a" if math.isnan(t.d_z_ci[0]) else f"{t.d_z_ci[0]:+.2f}, {t.d_z_ci[1]:+.2f}"
    return (
        f"{t.mean:+.4f} [{t.ci[0]:+.4f}, {t.ci[1]:+.4f}]; d_z {t.d_z:+.2f} [{d_z_ci}]; "
        f"p_Holm {v.p_holm:.3g} (n={t.n}): **{v.verdict}**"
    )


def plot(table: dict[str, dict[str, list[float]]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in table if "mean NLL" in table[m]]
    if not methods:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(methods) + 1.5), sharey=True)
    for ax, (metric, up) in zip(axes, AGGREGATES, strict=True):
        means = [np.mean(table[m].get(metric, [np.nan])) for m in methods]
        stds = [
            np.std(table[m][metric], ddof=1) if len(table[m].get(metric, [])) > 1 else 0
            for m in methods
        ]
        colours = ["#999999" if m in ("base", "random") else "#3b6fb6" for m in methods]
        ax.barh(methods, means, xerr=stds, color=colours, capsize=3)
        finite = [v for v in means if np.isfinite(v)]
        if finite:
            span = max(finite) - min(finite) or abs(max(finite)) * 0.01 or 1.0
            ax.set_xlim(min(finite) - span * 0.6, max(finite) + span * 0.6)
        ax.set_title(f"{metric} ({'higher' if up else 'lower'} is better)")
        ax.invert_yaxis()
    fig.suptitle("mean ± std over seeds (grey: base model and random)")
    fig.tight_layout()
    return save_figure(fig, out, "quality_v1")


def write_results(
    grid: Grid, out: Path, *, preset: str, seconds: float, command: str | None = None
) -> Path:
    """``quality_v1.md`` and ``quality_v1.png`` in ``out`` from every finished job of ``grid``.

    ``command`` is the one that computes the grid (default: this process's command line).
    """
    results = grid.results()
    table = metric_table(results)
    p = grid.protocol
    suites = [s for s in NLL_SUITES + MC_SUITES if s in p.suites]
    done, total = len(results), len(grid.jobs())
    ordering, _ = ordering_table(results, set(table))
    protocol = "\n".join(f"- {k}: `{v}`" for k, v in _public(p.to_dict()).items())
    status = (
        "complete"
        if done == total
        else f"**partial: {done} of {total} jobs finished** (rerun the command to continue)"
    )
    compute = sum(flat_metrics(row)["seconds"] for row in results)
    nll_names = ", ".join(s for s in suites if s in NLL_SUITES)
    mc_names = ", ".join(s for s in suites if s in MC_SUITES)
    body = f"""Preset `{preset}`; {status}.

NLL columns ({nll_names}): mean per-token negative
log-likelihood of the reference answer given the prompt (chat template applied; token-weighted
over the suite's items); lower is better. Accuracy columns ({mc_names}):
log-likelihood multiple choice; higher is better. `held-out NLL`: the same NLL on pool rows held
out before selection (mean over sources; per source below). Cells: mean ± std over seeds
(selection and training seed varied together). `wall s per seed`: selection + training +
evaluation, as measured when the job ran (compare only jobs run under the same machine load).
The finished jobs took {compute / 3600:.2f} h of wall time in all (summed per job: jobs that
shared the machine each count in full).

## Results

{main_table(table, suites)}

## Claimed ordering, seed-paired

Difference first − second per seed (same seed on both sides): its mean with a
{LEVEL:.0%} t interval, Cohen's d_z (mean / sd of the differences) with a {LEVEL:.0%}
interval from the noncentral t, and the two-sided paired t-test's p-value (exact Student t
with seeds − 1 degrees of freedom) after Holm's correction over every cell of this table (one
family). **holds** / **reversed**: Holm-adjusted p ≤ {ALPHA:g} with the difference on the
claimed / the other side; **within noise**: not significant after the correction; **n/a**: one
seed, or differences all equal (zero spread), which are not tested and not counted in the family.

{ordering}

## Held-out pool rows, NLL per source

{holdout_table(table)}

## Protocol

{protocol}
"""
    plot(table, out)
    title = "Selection quality on SmolLM2-135M"
    note = (
        "The grid is cached per (method, seed): this run computed only what was missing and read "
        "the rest from disk, so see the per-job wall times above for the cost of the grid."
    )
    return write_report(
        out, "quality_v1", title, body, seconds, command=command, run_time_note=note
    )


def _public(settings: dict[str, Any]) -> dict[str, Any]:
    """The protocol with the machine's absolute paths cut to the data folder's name."""
    shown = dict(settings)
    for key in ("pool", "eval_dir"):
        path = Path(str(shown[key]))
        shown[key] = "/".join(path.parts[-3:]) if len(path.parts) > 3 else str(path)
    return shown
