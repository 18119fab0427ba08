"""Token, turn and length statistics of the pool and of the selection, per source and per
cluster: the manifest's ``statistics`` section, shown by ``kmq inspect`` and the report.

A row's *turns* are its messages (system turns included), its *characters* the characters of
their contents, its *tokens* those of :mod:`kmq.tokens` (None when no tokenizer was given:
``--tokenizer`` or ``--budget-tokens`` count them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kmq.examples import Example
from kmq.tokens import TOKENS_OF_A_ROW


def summarize(
    rows: np.ndarray, turns: np.ndarray, characters: np.ndarray, tokens: np.ndarray | None
) -> dict[str, Any]:
    """Rows, and the total, mean, median and max tokens, mean turns and mean characters of the
    rows at ``rows`` (zeros for none)."""
    out: dict[str, Any] = {"rows": len(rows)}
    if tokens is not None:
        picked = tokens[rows]
        out |= {
            "tokens": int(picked.sum()),
            "tokens_mean": round(float(picked.mean()), 1) if len(rows) else 0.0,
            "tokens_median": float(np.median(picked)) if len(rows) else 0.0,
            "tokens_max": int(picked.max()) if len(rows) else 0,
        }
    out["turns_mean"] = round(float(turns[rows].mean()), 2) if len(rows) else 0.0
    out["characters_mean"] = round(float(characters[rows].mean()), 1) if len(rows) else 0.0
    return out


def statistics(
    examples: Sequence[Example],
    selected: np.ndarray,
    *,
    tokens: np.ndarray | None = None,
    tokenizer: str | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """The manifest's ``statistics``: ``pool`` and ``selected`` summaries (see
    :func:`summarize`), the same ``by_source`` (rows without a source under ``(none)``; None
    when no row has one) and ``by_cluster`` (a list in cluster order; None without clusters)."""
    turns = np.array([len(ex.messages) for ex in examples], dtype=np.int64)
    characters = np.array(
        [sum(len(m.content) for m in ex.messages) for ex in examples], dtype=np.int64
    )
    everything = np.arange(len(examples), dtype=np.int64)
    selected = np.asarray(selected, dtype=np.int64)
    is_selected = np.zeros(len(examples), dtype=bool)
    is_selected[selected] = True

    def both(rows: np.ndarray) -> dict[str, Any]:
        return {
            "pool": summarize(rows, turns, characters, tokens),
            "selected": summarize(rows[is_selected[rows]], turns, characters, tokens),
        }

    by_source = None
    sources = [ex.source for ex in examples]
    if any(s is not None for s in sources):
        names = np.array([s if s is not None else "(none)" for s in sources], dtype=object)
        by_source = {name: both(np.flatnonzero(names == name)) for name in sorted(set(names))}
    by_cluster = None
    if labels is not None:
        k = int(labels.max()) + 1 if len(labels) else 0
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(k + 1))
        by_cluster = [{"cluster": j} | both(order[bounds[j] : bounds[j + 1]]) for j in range(k)]
    return {
        "tokenizer": tokenizer,
        "tokens_of_a_row": TOKENS_OF_A_ROW if tokens is not None else None,
        "pool": summarize(everything, turns, characters, tokens),
        "selected": summarize(selected, turns, characters, tokens),
        "by_source": by_source,
        "by_cluster": by_cluster,
    }
