"""The noise margin: does a trained model tell a clean answer from the planted noise?

For every held-out row (clean prompt and answer, never selected) the answer is corrupted the
three ways ``benchmarks/noise.py`` plants noise in the pool — ``shuffle`` (the answer's words in
a random order), ``swap`` (the answer of a held-out row of another source), ``truncate`` (cut
after its first sentence) — and the model scores the clean and the corrupted answers given the
prompt. A row's margin for a kind is the corrupted answer's per-token NLL minus the clean one's
(nats per token; the end-of-turn marker is scored, so a model that learned to stop after one
sentence finds the truncated answer likelier). A kind's margin is the mean over the rows the
kind changes; the ``noise margin`` is the mean of the three kinds. Higher = the model prefers
the clean answers by more, i.e. it learned less of the noise.

The corruptions are a pure function of the held-out rows and ``seed`` (one generator, drawn in
row order), so every model is scored on the same texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from noise import KINDS, first_sentence, shuffle_words

MARGIN = "noise margin"
"""The mean over :data:`noise.KINDS` of the per-kind margins (nats per token; higher = better)."""


@dataclass(frozen=True)
class HeldRow:
    """A held-out row: its id, source, prompt messages and clean answer."""

    id: str
    source: str
    prompt: tuple[Any, ...]
    answer: str


def corruptions(rows: Sequence[HeldRow], seed: int) -> dict[str, list[tuple[int, str]]]:
    """``{kind: [(row index, corrupted answer), …]}`` for every row the kind changes.

    ``swap`` takes its donor among the rows of another source (drawn uniformly; a source's
    rows are skipped when every row is of that source) so the answer cannot fit its prompt by
    accident; ``shuffle`` and ``truncate`` skip the rows they cannot change."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[int, str]]] = {kind: [] for kind in KINDS}
    sources = np.array([r.source for r in rows])
    for i, row in enumerate(rows):
        shuffled = shuffle_words(row.answer, rng)
        if shuffled is not None:
            out["shuffle"].append((i, shuffled))
        others = np.flatnonzero(sources != row.source)
        if len(others):
            donor = rows[int(rng.choice(others))].answer
            if donor != row.answer:
                out["swap"].append((i, donor))
        head = first_sentence(row.answer)
        if head is not None:
            out["truncate"].append((i, head))
    return out


def summarize(
    rows: Sequence[HeldRow],
    clean_sum: np.ndarray,
    clean_tokens: np.ndarray,
    corrupted: dict[str, list[tuple[int, str]]],
    scored: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """The margins from per-item scores: ``clean_sum``/``clean_tokens`` the clean answers'
    summed NLL and token counts (one per row), ``scored[kind]`` the same for
    ``corrupted[kind]``'s answers. Returns ``{"kinds": {kind: margin}, "n": {kind: rows},
    MARGIN: mean of the kinds, "clean": {source: token-weighted clean NLL}}``."""
    clean = clean_sum / clean_tokens
    kinds: dict[str, float] = {}
    counts: dict[str, int] = {}
    for kind in KINDS:
        index = np.array([i for i, _ in corrupted[kind]], dtype=np.int64)
        if not len(index):
            raise ValueError(f"no held-out row can be corrupted by {kind!r}")
        nll_sum, tokens = scored[kind]
        kinds[kind] = float(np.mean(nll_sum / tokens - clean[index]))
        counts[kind] = len(index)
    by_source: dict[str, float] = {}
    sources = np.array([r.source for r in rows])
    for source in sorted(set(sources.tolist())):
        mask = sources == source
        by_source[source] = float(clean_sum[mask].sum() / clean_tokens[mask].sum())
    return {
        "kinds": kinds,
        "n": counts,
        MARGIN: float(np.mean(list(kinds.values()))),
        "clean": by_source,
    }


def noise_margin(
    model: Any,
    tokenizer: Any,
    rows: Sequence[HeldRow],
    *,
    seed: int,
    max_length: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Score ``rows``' clean answers and their :func:`corruptions` with ``model``; the margins
    (:func:`summarize`)."""
    from evaluation.scoring import nll
    from evaluation.suites import NLLItem

    settings = {"max_length": max_length, "batch_size": batch_size, "show_progress": False}
    clean = nll(
        model,
        tokenizer,
        [NLLItem(r.id, r.prompt, r.answer) for r in rows],
        desc="clean",
        **settings,  # type: ignore[arg-type]
    )
    corrupted = corruptions(rows, seed)
    scored = {}
    for kind, items in corrupted.items():
        result = nll(
            model,
            tokenizer,
            [NLLItem(f"{rows[i].id}/{kind}", rows[i].prompt, text) for i, text in items],
            desc=kind,
            **settings,  # type: ignore[arg-type]
        )
        scored[kind] = (result.nll_sum, result.tokens)
    return summarize(rows, clean.nll_sum, clean.tokens, corrupted, scored)
