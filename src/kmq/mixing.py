"""Per-source shares (``--mix source=share …``) applied as quotas over the clustered selection.

The rule: **the budget is split by source first, then the method runs inside each source's
rows**, on the one clustering of the whole pool.

1. Source budgets: share × budget (rows, or tokens with ``--budget-tokens``), rounded by largest
   remainder so that they sum to the budget exactly. A source not named in the mix gets none of
   the budget (its rows are not picked); a named source that has no row is an error, and so are
   shares that are not in (0, 1] or do not sum to 1 (within 1e-6), and a share asking for more
   rows (tokens) than the source has left after the exclusions.
2. Each source's budget is selected by the method among that source's rows only, with the
   clusters of the whole pool: kMQ splits it into per-cluster quotas (``--allocation``) over
   the clusters the source occupies and draws by quality inside each. Each source draws from
   its own random stream of the seed.

Why this rule and not per-cluster quotas constrained by source: shares are totals per source,
and the clusters that hold a source are the only ones where its rows can go, so the balance
kMQ can keep is inside each source; kMQ's balanced quotas there spread every source's rows
evenly over the topics it covers, with the same guarantees as without a mix (exact budget,
quotas capped at what a cluster holds). Constraining the global per-cluster quotas by source
instead is an integer transport problem that has no solution whenever a cluster lacks the
sources its quota would need, and its solutions would trade one balance for the other without
a stated rule.

The picks are ordered round-robin over the sources (each source's first pick, then each
second, … in the order of the mix), each source's picks in their own order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from kmq.allocation import weighted_quotas
from kmq.engines import Engine
from kmq.errors import KmqError, ParameterError
from kmq.random import SeedLike, seed_sequence
from kmq.selectors.base import SelectionResult, Selector, available_mask
from kmq.shares import TOLERANCE, check_shares
from kmq.token_budget import TokenSelection, select_tokens

MIX_STREAM = 0x4D4958  # under the seed, source i draws from spawn key (MIX_STREAM, i)


def source_budgets(
    mix: Mapping[str, float], budget: int, capacity: Mapping[str, int], unit: str = "rows"
) -> dict[str, int]:
    """Each source's budget: share × ``budget`` by largest remainder, summing to ``budget``;
    an error when a share asks for more than the source's ``capacity`` (what it has left)."""
    for source, share in mix.items():
        want = share * budget
        if want > capacity[source] + TOLERANCE:
            raise ParameterError(
                "mix",
                f"{{param}} {source}={share:g} asks for {want:,.0f} of the {budget:,} {unit}, but "
                f"source {source!r} has {capacity[source]:,} {unit} left to select",
            )
    names = list(mix)
    quotas = weighted_quotas(
        budget,
        np.array([capacity[s] for s in names], dtype=np.int64),
        np.array([mix[s] for s in names], dtype=np.float64),
    )
    return {s: int(q) for s, q in zip(names, quotas, strict=True)}


def source_seed(seed: SeedLike, index: int) -> np.random.SeedSequence:
    base = seed_sequence(seed)
    return np.random.SeedSequence(base.entropy, spawn_key=(*base.spawn_key, MIX_STREAM, index))


def select_mixed(
    selector: Selector,
    embeddings: np.ndarray,
    budget: int,
    mix: Mapping[str, float],
    sources: Sequence[str | None],
    *,
    labels: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    exclude: np.ndarray | Sequence[int] | None = None,
    seed: SeedLike = 0,
    budget_tokens: int | None = None,
    tokens: np.ndarray | None = None,
) -> tuple[SelectionResult, dict[str, object], TokenSelection | None]:
    """``budget`` rows (or ``budget_tokens`` tokens of ``tokens``) split by ``mix`` over the
    rows' ``sources`` (see the module docstring): the result, the manifest's ``mix`` entry,
    and the token budget's totals (None for a row budget)."""
    check_shares(mix)
    n = len(embeddings)
    if len(sources) != n:
        raise KmqError(f"sources must have one entry per row ({n}), got {len(sources)}")
    names = np.array(["" if s is None else s for s in sources], dtype=object)
    present = Counter(s for s in sources if s is not None)
    unknown = [s for s in mix if s not in present]
    if unknown:
        have = ", ".join(sorted(present)) or "none (no row has a source)"
        raise ParameterError(
            "mix",
            f"{{param}} names {', '.join(map(repr, unknown))}, not a source of the pool; its "
            f"sources: {have}",
        )
    free = available_mask(n, exclude)
    by_tokens = budget_tokens is not None and tokens is not None
    rows_of = {s: free & (names == s) for s in mix}
    capacity = {
        s: int(tokens[m].sum()) if by_tokens and tokens is not None else int(m.sum())
        for s, m in rows_of.items()
    }
    total = int(budget_tokens) if by_tokens and budget_tokens is not None else budget
    budgets = source_budgets(mix, total, capacity, "tokens" if by_tokens else "rows")
    parts: dict[str, SelectionResult] = {}
    spent: dict[str, TokenSelection] = {}
    for i, source in enumerate(mix):
        if budgets[source] == 0:
            continue
        kwargs = {"labels": labels, "quality": quality, "exclude": ~rows_of[source]}
        if by_tokens and tokens is not None:
            parts[source], spent[source] = select_tokens(
                selector, embeddings, budgets[source], tokens, seed=source_seed(seed, i), **kwargs
            )
        else:
            parts[source] = selector.select(
                embeddings, budgets[source], seed=source_seed(seed, i), **kwargs
            )
    result = combine(parts, labels, budget if not by_tokens else None)
    left_out = sorted(set(present) - set(mix))
    if left_out:
        result.notes.append(f"the mix gives no share to {', '.join(left_out)}: none of their rows")
    unit = "tokens" if by_tokens else "rows"
    entry: dict[str, object] = {
        "shares": dict(mix),
        "unit": unit,
        "budgets": budgets,
        "selected_rows": {s: len(parts[s]) if s in parts else 0 for s in mix},
        "unmixed_sources": left_out,
    }
    totals = None
    if by_tokens and budget_tokens is not None and tokens is not None:
        entry["selected_tokens"] = {s: spent[s].selected_tokens if s in spent else 0 for s in mix}
        totals = TokenSelection(budget_tokens, int(tokens[result.indices].sum()))
    return result, entry, totals


def combine(
    parts: Mapping[str, SelectionResult], labels: np.ndarray | None, budget: int | None
) -> SelectionResult:
    """The sources' results as one, picks round-robin over the sources."""
    ordered: list[tuple[int, int, int, float, str]] = []
    for s_index, (source, part) in enumerate(parts.items()):
        for rank, (row, score, reason) in enumerate(
            zip(part.indices, part.scores, part.reasons, strict=True)
        ):
            ordered.append((rank, s_index, int(row), float(score), f"source {source}: {reason}"))
    ordered.sort(key=lambda p: (p[0], p[1]))
    first = next(iter(parts.values()))
    quotas = None
    if all(p.quotas is not None for p in parts.values()):
        quotas = np.sum([np.asarray(p.quotas) for p in parts.values()], axis=0)
    indices = np.array([p[2] for p in ordered], dtype=np.int64)
    notes = sorted({note for p in parts.values() for note in p.notes})
    return SelectionResult(
        method=first.method,
        budget=len(indices) if budget is None else budget,
        indices=indices,
        scores=np.array([p[3] for p in ordered], dtype=np.float64),
        score_name=first.score_name,
        reasons=[p[4] for p in ordered],
        labels=labels if first.labels is not None else None,
        quotas=quotas,
        notes=notes,
    )


def select_budgeted(
    selector: Selector,
    embeddings: np.ndarray,
    budget: int,
    *,
    engine: Engine,
    mix: Mapping[str, float] | None = None,
    sources: Sequence[str | None] | None = None,
    budget_tokens: int | None = None,
    tokens: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    exclude: np.ndarray | Sequence[int] | None = None,
    seed: SeedLike = 0,
) -> tuple[SelectionResult, dict[str, object] | None, TokenSelection | None]:
    """The selection of a run: mixed by source (``mix``), under a token budget
    (``budget_tokens``), both, or a plain row budget on ``engine``; with the manifest's ``mix``
    entry and the token totals (None when not used)."""
    if mix:
        return select_mixed(
            selector,
            embeddings,
            budget,
            mix,
            sources if sources is not None else [None] * len(embeddings),
            labels=labels,
            quality=quality,
            exclude=exclude,
            seed=seed,
            budget_tokens=budget_tokens,
            tokens=tokens,
        )
    if budget_tokens is not None and tokens is not None:
        result, spent = select_tokens(
            selector,
            embeddings,
            budget_tokens,
            tokens,
            labels=labels,
            quality=quality,
            exclude=exclude,
            seed=seed,
        )
        return result, None, spent
    result = engine.select(
        selector, embeddings, budget, labels=labels, quality=quality, exclude=exclude, seed=seed
    )
    return result, None, None
