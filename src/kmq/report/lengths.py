"""The report's "Tokens, turns and lengths" section: the manifest's ``statistics`` (see
:mod:`kmq.statistics`) per source and per cluster, selection against pool."""

from __future__ import annotations

from typing import Any

from kmq.report.html import Cell, Section, esc, note, num, table

MAX_ROWS = 50  # clusters shown (the largest)


def lengths_section(stats: dict[str, Any] | None) -> Section:
    title = "Tokens, turns and lengths"
    if not stats:
        return Section("lengths", title, [note("this manifest has no statistics (older kmq)")])
    counted = stats.get("tokenizer") is not None
    body: list[str] = []
    if counted:
        body.append(f"<p>Tokens by {esc(stats['tokenizer'])}: {esc(stats['tokens_of_a_row'])}.</p>")
    else:
        body.append(note("no tokenizer given (--tokenizer or --budget-tokens): no token counts"))
    budget = stats.get("token_budget")
    if budget:
        body.append(
            f"<p>Token budget {budget['budget_tokens']:,}: the selection holds "
            f"{budget['selected_tokens']:,} tokens. Rule: {esc(budget['rule'])}.</p>"
        )
    headers = ["part", "rows"] + (["tokens", "mean", "median", "max"] if counted else [])
    headers += ["mean turns", "mean characters"]
    body.append(table(headers, [row("pool", stats["pool"]), row("selected", stats["selected"])]))
    for name, groups in (
        ("source", (stats.get("by_source") or {}).items()),
        ("cluster", [(str(c["cluster"]), c) for c in stats.get("by_cluster") or []]),
    ):
        ranked = sorted(groups, key=lambda kv: -kv[1]["pool"]["rows"])[:MAX_ROWS]
        if not ranked:
            continue
        rows = []
        for key, group in ranked:
            rows += [row(f"{key} pool", group["pool"]), row(f"{key} selected", group["selected"])]
        more = f" (the {MAX_ROWS} largest)" if name == "cluster" and len(ranked) == MAX_ROWS else ""
        body += [f"<h3>Per {name}{more}</h3>", table([name, *headers[1:]], rows, sortable=True)]
    return Section("lengths", title, body)


def row(name: str, summary: dict[str, Any]) -> list[Cell]:
    cells: list[Cell] = [name, num(summary["rows"])]
    if "tokens" in summary:
        cells += [
            num(summary["tokens"]),
            num(summary["tokens_mean"], ",.1f"),
            num(summary["tokens_median"], ",.1f"),
            num(summary["tokens_max"]),
        ]
    return [*cells, num(summary["turns_mean"], ".2f"), num(summary["characters_mean"], ",.0f")]
