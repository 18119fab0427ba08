"""The small Markdown subset of the benchmark results (headings, lists, tables,
paragraphs) rendered as HTML."""

from __future__ import annotations

import re
from collections.abc import Callable

from kmq.report.html import Markup, esc


def markdown_html(text: str) -> Markup:
    """A small subset of Markdown: headers, tables, fenced code, bullet lists, paragraphs."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("```"):
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines)
            )
            out.append("<pre><code>" + esc("\n".join(lines[i + 1 : end])) + "</code></pre>")
            i = end + 1
        elif line.startswith("|"):
            end = block_end(lines, i, lambda s: s.startswith("|"))
            out.append(markdown_table(lines[i:end]))
            i = end
        elif re.match(r"[-*] ", line):
            end = block_end(lines, i, lambda s: re.match(r"[-*] |\s+\S", s) is not None)
            out.append(markdown_list(lines[i:end]))
            i = end
        elif heading := re.match(r"(#{1,6})\s+(.*)", line):
            level = min(len(heading.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.strip():
            end = block_end(lines, i, is_paragraph)
            out.append("<p>" + inline(" ".join(s.strip() for s in lines[i:end])) + "</p>")
            i = end
        else:
            i += 1
    return Markup("".join(out))


def markdown_list(lines: list[str]) -> str:
    """Bullet items; an indented line continues the item above it."""
    items: list[str] = []
    for line in lines:
        if re.match(r"[-*] ", line):
            items.append(line[2:].strip())
        else:
            items[-1] += " " + line.strip()
    return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>"


def block_end(lines: list[str], start: int, belongs: Callable[[str], bool]) -> int:
    end = start + 1
    while end < len(lines) and belongs(lines[end].rstrip()):
        end += 1
    return end


def is_paragraph(line: str) -> bool:
    return bool(line.strip()) and not re.match(r"(```|\||[-*] |#{1,6}\s)", line)


def inline(text: str) -> str:
    """Escaped text with `code` and **bold**."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def markdown_table(lines: list[str]) -> Markup:
    rows = [split_row(line) for line in lines]
    aligned = len(rows) > 1 and all(re.fullmatch(r":?-{1,}:?", c.strip()) for c in rows[1])
    align = [alignment(c) for c in rows[1]] if aligned else []
    body_rows = rows[2:] if aligned else rows[1:]
    head = "".join(f"<th{style(align, n)}>{inline(c)}</th>" for n, c in enumerate(rows[0]))
    body = "".join(
        "<tr>"
        + "".join(f"<td{style(align, n)}>{inline(c)}</td>" for n, c in enumerate(r))
        + "</tr>"
        for r in body_rows
    )
    return Markup(
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def alignment(cell: str) -> str:
    cell = cell.strip()
    if cell.startswith(":") and cell.endswith(":"):
        return "center"
    return "right" if cell.endswith(":") else ""


def style(align: list[str], n: int) -> str:
    return f' style="text-align:{align[n]}"' if n < len(align) and align[n] else ""
