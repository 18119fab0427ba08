"""``kmq inspect`` and ``kmq report``: what a selection folder or an iterate run holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from kmq.cli.iterate import print_state
from kmq.errors import KmqError
from kmq.loop import IterativeSelection
from kmq.outdir import not_an_output
from kmq.outputs import MANIFEST, TABLE, Manifest
from kmq.report import write_report

stdout = Console()


def add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report")
    p.add_argument(
        "path", help="a kmq select output, a kmq iterate run, or a benchmark results folder"
    )
    p.add_argument("-o", "--out", help="HTML file to write (default PATH/report.html)")
    p.add_argument("--max-clusters", type=int, default=300, help="rows of the cluster table")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    path = write_report(args.path, args.out, max_clusters=args.max_clusters)
    stdout.print(f"report: {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


def add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="summarise a selection folder or an iterate run")
    p.add_argument("out", help="a folder written by kmq select, or a kmq iterate run folder")
    p.add_argument(
        "--json",
        action="store_true",
        help="select: the manifest plus the selected ids in pick order; iterate: the whole state "
        "(per round: picked ids, weights before/after), as JSON",
    )
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "config.json").exists():
        state = IterativeSelection(out).state()
        if args.json:
            sys.stdout.write(json.dumps(state, ensure_ascii=False) + "\n")
        else:
            print_state(state)
        return 0
    path = out / MANIFEST
    if not path.exists():
        raise KmqError(not_an_output(out))
    manifest = Manifest.read(path)
    if args.json:
        ids = pq.read_table(out / TABLE, columns=["id"]).column("id").to_pylist()
        record = manifest.to_dict() | {"selected_ids": ids}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 0
    print_summary(manifest, out)
    return 0


def print_summary(manifest: Manifest, out: Path) -> None:
    """The run in a few lines, then pool vs selection per source (or per cluster)."""
    counts = manifest.counts
    clusters = manifest.clusters
    lines = [
        f"[bold]{manifest.method}[/] selected {counts['selected']} of {counts['valid']} rows "
        f"(budget {counts['budget']}, seed {manifest.seed}) → {out}",
        f"input {manifest.input['path']} ({manifest.input['format']}, "
        f"{manifest.input['kind']}); rejected {counts['rejected']}, "
        f"excluded {counts['excluded']}",
    ]
    lines.extend(checks_lines(manifest.checks))
    if clusters:
        sil = clusters.get("silhouette")
        best = f", silhouette {sil[str(clusters['k'])]:.4f}" if sil else ""
        lines.append(f"k = {clusters['k']}{best}; allocation {manifest.config['allocation']}")
    if counts["shortfall"]:
        lines.append(f"[yellow]shortfall: {counts['shortfall']} rows under budget[/]")
    for note in manifest.notes:
        lines.append(f"[yellow]note: {note}[/]")
    quality = manifest.quality or {}
    if "rows_scored" in quality:
        how = (
            f"{quality['candidates']} × quota candidates per cluster"
            if quality.get("candidates")
            else "every row"
        )
        lines.append(
            f"quality {quality['column']}: {quality['rows_scored']} of {quality['rows']} rows "
            f"scored ({how})"
        )
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in manifest.timings_s.items())
    lines.append(f"time: {timings}; peak memory {manifest.peak_rss_mb or 0:.0f} MB")
    lines.extend(token_lines(manifest.statistics))
    mix = (manifest.sources or {}).get("mix")
    if mix:
        parts = ", ".join(
            f"{s} {share:g} ({mix['selected_rows'][s]} rows)" for s, share in mix["shares"].items()
        )
        lines.append(f"mix ({mix['unit']} split by source first): {parts}")
    for line in lines:
        stdout.print(line)
    if manifest.sources or manifest.clusters:
        stdout.print(composition_table(manifest))
    if manifest.statistics:
        stdout.print(statistics_table(manifest.statistics))


def checks_lines(checks: dict[str, Any] | None) -> list[str]:
    """Rejects per reason and repaired rows, when there were any."""
    if not checks:
        return []
    lines = []
    if checks["rejected_by_reason"]:
        why = ", ".join(f"{kind} {n}" for kind, n in checks["rejected_by_reason"].items())
        lines.append(f"rejected by reason: {why} (rejects.jsonl)")
    if checks["repaired"]:
        lines.append(f"repaired {checks['repaired']} conversations ({checks['repairs']})")
    return lines


def composition_table(manifest: Manifest) -> Table:
    sources = manifest.sources
    if sources:
        title, pool, picked = "source", sources["pool"], sources["selected"] or {}
    else:
        clusters = manifest.clusters or {"pool": [], "selected": []}
        order = sorted(range(len(clusters["pool"])), key=lambda j: -clusters["pool"][j])[:20]
        title = "cluster (20 largest)"
        pool = {str(j): clusters["pool"][j] for j in order}
        picked = {str(j): clusters["selected"][j] for j in order}
    n_pool = sum(pool.values()) or 1
    n_pick = manifest.counts["selected"] or 1
    table = Table(title="pool vs selection")
    for col in (title, "pool", "pool %", "selected", "selected %"):
        table.add_column(col, justify="left" if col == title else "right")
    for key, count in sorted(pool.items(), key=lambda kv: -kv[1]):
        got = picked.get(key, 0)
        table.add_row(
            key, str(count), f"{100 * count / n_pool:.1f}", str(got), f"{100 * got / n_pick:.1f}"
        )
    if sources:
        table.caption = (
            f"source entropy: pool {sources['entropy_pool']:.3f}, "
            f"selection {sources['entropy_selected']:.3f} nats"
        )
    return table


def token_lines(stats: dict[str, Any] | None) -> list[str]:
    """The selection's tokens against the pool's (and the token budget), when counted."""
    if not stats or stats.get("tokenizer") is None:
        return []
    picked, pool = stats["selected"]["tokens"], stats["pool"]["tokens"]
    budget = stats.get("token_budget")
    cap = f" of {budget['budget_tokens']:,} (--budget-tokens)" if budget else ""
    return [f"tokens ({stats['tokenizer']}): selected {picked:,}{cap}; pool {pool:,}"]


def statistics_table(stats: dict[str, Any]) -> Table:
    """Rows, tokens, turns and characters per source (or per cluster, the 20 largest, when no
    row has a source), selection / pool."""
    groups = stats.get("by_source")
    title = "source"
    if not groups:
        clusters = sorted(stats.get("by_cluster") or [], key=lambda c: -c["pool"]["rows"])[:20]
        groups = {str(c["cluster"]): c for c in clusters}
        title = "cluster (20 largest)"
    counted = stats.get("tokenizer") is not None
    table = Table(title="per " + title.split()[0] + ": selected / pool")
    columns = [title, "rows"] + (["tokens", "mean tokens"] if counted else [])
    for col in [*columns, "mean turns", "mean chars"]:
        table.add_column(col, justify="left" if col == title else "right")
    for name, group in groups.items():
        sel, pool = group["selected"], group["pool"]
        cells = [name, f"{sel['rows']:,} / {pool['rows']:,}"]
        if counted:
            cells += [
                f"{sel['tokens']:,} / {pool['tokens']:,}",
                f"{sel['tokens_mean']:,.0f} / {pool['tokens_mean']:,.0f}",
            ]
        cells += [
            f"{sel['turns_mean']:.1f} / {pool['turns_mean']:.1f}",
            f"{sel['characters_mean']:,.0f} / {pool['characters_mean']:,.0f}",
        ]
        table.add_row(*cells)
    return table
