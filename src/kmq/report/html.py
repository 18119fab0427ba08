"""The HTML kit of the report: escaping, numbers, tables, inline plots, the page."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kmq._imports import require
from kmq.errors import KmqError

DPI = 100


class Markup(str):
    """HTML that is inserted as is (everything else is escaped)."""


@dataclass(frozen=True)
class Num:
    """A table cell holding a number: shown as ``text``, sorted by ``value``."""

    value: float
    text: str


Cell = str | Num


@dataclass
class Section:
    id: str
    title: str
    body: list[str]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: float | int | None, spec: str = ",") -> Num:
    """A number cell; NaN and None show as an empty cell (sorted last)."""
    if value is None or not np.isfinite(value):
        return Num(float("nan"), "")
    return Num(float(value), format(value, spec))


def cell_html(cell: Cell) -> str:
    if isinstance(cell, Num):
        value = "" if np.isnan(cell.value) else repr(cell.value)
        return f'<td class="num" data-v="{value}">{esc(cell.text)}</td>'
    if isinstance(cell, Markup):
        return f"<td>{cell}</td>"
    return f"<td>{esc(cell)}</td>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    sortable: bool = False,
    caption: str | None = None,
    css: str = "",
) -> Markup:
    classes = " ".join(c for c in (css, "sortable" if sortable else "") if c)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell_html(c) for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{classes}"' if classes else ""
    return Markup(f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def key_values(rows: Iterable[tuple[str, str]]) -> Markup:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return Markup(f'<table class="kv"><tbody>{body}</tbody></table>')


def note(text: str) -> Markup:
    return Markup(f'<p class="note">{esc(text)}</p>')


def bullets(items: Iterable[str], css: str = "") -> Markup:
    klass = f' class="{css}"' if css else ""
    return Markup(f"<ul{klass}>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")


def plot(draw: Callable[[Any], None], alt: str, size: tuple[float, float] = (9.0, 4.0)) -> Markup:
    """``draw(figure)`` as an inline PNG (matplotlib without pyplot: no global state)."""
    try:
        figure = require("matplotlib.figure")
    except KmqError as exc:
        return note(f"{alt}: {exc}")
    fig = figure.Figure(figsize=size, layout="constrained")
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Markup(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def plain(text: str) -> str:
    """``text`` for a matplotlib label: ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def page(title: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{"".join(s.body)}</section>' for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header><main>{body}</main>"
        f"<script>{SORT_JS}</script></body></html>\n"
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
background:#fafafa}
header{background:#1f3b57;color:#fff;padding:12px 24px}
header h1{margin:0 0 6px;font-size:20px}
nav a{color:#cfe3f7;margin-right:16px;text-decoration:none}
main{max-width:1200px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px 20px 16px;
margin:16px 0}
h2{font-size:17px;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-order=asc]::after{content:" \\25B2"}
table.sortable th[data-order=desc]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:110px}
table.kv td{min-width:320px;max-width:640px}
.row{display:flex;flex-wrap:wrap;gap:0 40px;align-items:flex-start}
table.clusters td:nth-child(2){min-width:140px}
table.clusters td:nth-last-child(2){min-width:180px}
table.clusters td:last-child{min-width:440px}
table.clusters ol{margin:0;padding-left:18px;color:#555;font-size:12px}
caption{caption-side:bottom;text-align:left;color:#666;font-size:12px;padding-top:4px}
tbody tr:nth-child(even){background:#fafbfc}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.note{color:#8a5a00;background:#fff8e6;border-left:3px solid #f0b400;padding:4px 8px}
pre{background:#f4f4f4;padding:8px;overflow-x:auto}
"""


SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? "asc" : "desc";
    function key(row) {
      var cell = row.cells[col];
      var text = cell.textContent.trim();
      if (cell.dataset.v === undefined && !/^[-+]?[0-9][0-9,]*[.]?[0-9]*/.test(text)) {
        return text.toLowerCase();
      }
      var v = parseFloat(cell.dataset.v === undefined ? text.replace(/,/g, "") : cell.dataset.v);
      return isNaN(v) ? (asc ? Infinity : -Infinity) : v;
    }
    Array.from(body.rows)
      .sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      })
      .forEach(function (row) { body.appendChild(row); });
  });
});
"""
