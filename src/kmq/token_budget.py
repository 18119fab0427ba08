"""Selection under a token budget: the picks' tokens sum to at most ``budget_tokens``.

Clustered methods (kmq, km-random, km-closest):

1. Token quotas. The allocation rule (``balanced``, ``proportional``, ``equal``; see
   :mod:`kmq.allocation`) shares the budget in *tokens* instead of rows: each cluster's capacity
   is the tokens of its rows that may be picked, so ``balanced`` gives every cluster the same
   number of tokens (capped at what it holds, the excess re-shared), ``proportional`` tokens ∝
   the cluster's tokens.
2. Each cluster ranks all its rows with the method's own draw (kMQ: the quality-weighted draw
   without replacement from the cluster's stream; the first q rows of that order are exactly
   kMQ's picks for a row quota q) and takes them in that order while they fit its token quota;
   it stops at the first row that does not fit.
3. The remainder: the tokens the clusters left unused are pooled and handed out round-robin
   over the clusters (ascending cluster id), each taking its next row in its own order that fits
   in what is left (a row longer than the remainder is passed over), until no row fits.

So the selection keeps kMQ's cluster balance in tokens, its total is at most the budget, and
it falls short of it by less than the shortest row not picked.

Other methods rank the pool as a whole: they are run at a row budget (first the budget over the
mean tokens per row, doubled while the picks still fit), the picks are taken in pick order while
they fit and the rest of the picks that fit the remainder are added in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kmq.allocation import allocate
from kmq.config import resolve_budget
from kmq.errors import KmqError, ParameterError
from kmq.random import SeedLike, seed_sequence
from kmq.selectors.base import ClusterSelector, SelectionResult, Selector, available_mask
from kmq.selectors.kmq import candidate_multiple

TOKEN_RULE = (
    "token quotas per cluster by the allocation rule over the clusters' tokens; each cluster "
    "takes its rows in the method's order while they fit its quota; the unused tokens are "
    "pooled and handed out round-robin to the next row of each cluster that fits"
)


@dataclass
class TokenSelection:
    """What a token budget gave: the budget, the picks' tokens, and per cluster (clustered
    methods) the token quota and the tokens picked in it and from the pooled remainder."""

    budget_tokens: int
    selected_tokens: int
    quotas: np.ndarray | None = None
    in_quota: np.ndarray | None = None
    from_remainder: np.ndarray | None = None

    def note(self) -> str:
        """One line for the result's notes."""
        return (
            f"token budget {self.budget_tokens:,}: the picks hold {self.selected_tokens:,} tokens"
        )

    def summary(self) -> dict[str, object]:
        """The manifest's ``tokens`` entry."""
        clustered = self.quotas is not None
        return {
            "budget_tokens": self.budget_tokens,
            "selected_tokens": self.selected_tokens,
            "rule": TOKEN_RULE if clustered else "pick order while it fits, then first fit",
            "quota_tokens": None if self.quotas is None else self.quotas.tolist(),
            "in_quota_tokens": None if self.in_quota is None else self.in_quota.tolist(),
            "remainder_tokens": None
            if self.from_remainder is None
            else self.from_remainder.tolist(),
        }


def check_tokens(tokens: np.ndarray, n: int) -> np.ndarray:
    """``tokens`` as int64, one count >= 0 per row."""
    tokens = np.asarray(tokens)
    if tokens.shape != (n,):
        raise KmqError(f"tokens must have one count per row ({n}), got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer) or (tokens < 0).any():
        raise KmqError("tokens must be integer counts >= 0")
    return tokens.astype(np.int64)


def select_tokens(
    selector: Selector,
    embeddings: np.ndarray,
    budget_tokens: int,
    tokens: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    exclude: np.ndarray | Sequence[int] | None = None,
    seed: SeedLike = 0,
) -> tuple[SelectionResult, TokenSelection]:
    """Select rows whose ``tokens`` sum to at most ``budget_tokens`` (see the module docstring)."""
    n = len(embeddings)
    tokens = check_tokens(tokens, n)
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int | np.integer):
        raise KmqError(f"budget_tokens must be a positive integer, got {budget_tokens!r}")
    if budget_tokens < 1:
        raise KmqError(f"budget_tokens must be >= 1, got {budget_tokens}")
    mask = available_mask(n, exclude)
    total = int(tokens[mask].sum())
    if budget_tokens > total:
        raise KmqError(
            f"budget_tokens={budget_tokens:,} exceeds the {total:,} tokens of the "
            f"{int(mask.sum()):,} rows left in the pool"
        )
    if getattr(selector, "candidates", None) is not None:
        raise KmqError(
            "kmq's quality candidates need row quotas: with a token budget every row's quality "
            "is read (quality_candidates=None)"
        )
    if isinstance(selector, ClusterSelector):
        return clustered(
            selector, embeddings, int(budget_tokens), tokens, labels, quality, mask, seed
        )
    return ranked(selector, embeddings, int(budget_tokens), tokens, labels, quality, mask, seed)


def clustered(
    selector: ClusterSelector,
    embeddings: np.ndarray,
    budget_tokens: int,
    tokens: np.ndarray,
    labels: np.ndarray | None,
    quality: np.ndarray | None,
    mask: np.ndarray,
    seed: SeedLike,
) -> tuple[SelectionResult, TokenSelection]:
    """Token quotas per cluster, each cluster's own order, the pooled remainder."""
    n = len(embeddings)
    seq = seed_sequence(seed)
    plan = selector.plan(
        n, int(mask.sum()), labels=labels, quality=quality, exclude=~mask, seed=seq
    )
    capacity = np.diff(plan.offsets)
    plan = replace(plan, quotas=capacity)  # every cluster ranks all of its rows
    k = len(capacity)
    token_capacity = np.array(
        [int(tokens[plan.members(j)].sum()) for j in range(k)], dtype=np.int64
    )
    quotas = allocate(selector.allocation, budget_tokens, token_capacity)
    orders = {
        j: selector.pick_cluster(
            j, plan.members(j), int(capacity[j]), embeddings, quality, plan.seed
        )
        for j in plan.clusters
    }
    in_quota = np.zeros(k, dtype=np.int64)
    taken: dict[int, list[int]] = {j: [] for j in orders}  # positions in the cluster's order
    nxt: dict[int, int] = {}
    for j, picks in orders.items():
        pos = 0
        while pos < len(picks.rows) and in_quota[j] + tokens[picks.rows[pos]] <= quotas[j]:
            in_quota[j] += tokens[picks.rows[pos]]
            taken[j].append(pos)
            pos += 1
        nxt[j] = pos
    left = budget_tokens - int(in_quota.sum())
    from_remainder = np.zeros(k, dtype=np.int64)
    extra: dict[int, list[int]] = {j: [] for j in orders}
    active = sorted(orders)
    while active and left > 0:
        still = []
        for j in active:
            rows = orders[j].rows
            pos = nxt[j]
            while pos < len(rows) and tokens[rows[pos]] > left:
                pos += 1
            if pos < len(rows):
                left -= int(tokens[rows[pos]])
                from_remainder[j] += tokens[rows[pos]]
                extra[j].append(pos)
                pos += 1
                still.append(j)
            nxt[j] = pos
        active = still
    ordered: list[tuple[int, int, int, float, str]] = []
    for j, picks in orders.items():
        notes = [(p, f"within cluster {j}'s token quota") for p in taken[j]]
        notes += [(p, "from the pooled token remainder") for p in extra[j]]
        for rank, (pos, why) in enumerate(notes):
            row = int(picks.rows[pos])
            reason = f"{picks.reasons[pos]}; {why} ({tokens[row]} tokens)"
            ordered.append((rank, j, row, float(picks.scores[pos]), reason))
    ordered.sort(key=lambda p: (p[0], p[1]))
    indices = np.array([p[2] for p in ordered], dtype=np.int64)
    result = SelectionResult(
        method=selector.name,
        budget=len(indices),
        indices=indices,
        scores=np.array([p[3] for p in ordered], dtype=np.float64),
        score_name=selector.score_name,
        reasons=[p[4] for p in ordered],
        labels=plan.labels,
        quotas=np.bincount(plan.labels[indices], minlength=k),
        notes=selector.notes(quality),
    )
    used = int(tokens[indices].sum())
    return result, TokenSelection(budget_tokens, used, quotas, in_quota, from_remainder)


def ranked(
    selector: Selector,
    embeddings: np.ndarray,
    budget_tokens: int,
    tokens: np.ndarray,
    labels: np.ndarray | None,
    quality: np.ndarray | None,
    mask: np.ndarray,
    seed: SeedLike,
) -> tuple[SelectionResult, TokenSelection]:
    """A method without clusters, run at a growing row budget until its picks overflow."""
    available = int(mask.sum())
    mean = max(float(tokens[mask].mean()), 1.0)
    rows = min(available, max(1, int(budget_tokens // mean)))
    seq = seed_sequence(seed)
    while True:
        result = selector.select(
            embeddings, rows, labels=labels, quality=quality, exclude=~mask, seed=seq
        )
        if int(tokens[result.indices].sum()) > budget_tokens or rows == available:
            break
        rows = min(available, 2 * rows)
    keep: list[int] = []
    left = budget_tokens
    for position, row in enumerate(result.indices):
        if tokens[row] <= left:
            keep.append(position)
            left -= int(tokens[row])
    at = np.array(keep, dtype=np.int64)
    picked = result.indices[at]
    trimmed = replace(
        result,
        budget=len(at),
        indices=picked,
        scores=result.scores[at],
        reasons=[result.reasons[i] for i in keep],
        counts=None,
    )
    trimmed.__post_init__()
    return trimmed, TokenSelection(budget_tokens, int(tokens[picked].sum()))


def rows_for_tokens(budget_tokens: int, tokens: np.ndarray | None, exclude: np.ndarray) -> int:
    """The rows a token budget holds at the mean tokens of the rows left (at least 1): what
    ``--k auto`` caps its grid with."""
    if tokens is None or not (~exclude).any():
        return 1
    return max(1, round(budget_tokens / max(float(tokens[~exclude].mean()), 1.0)))


def row_budget(
    budget: int | float | None,
    budget_tokens: int | None,
    tokens: np.ndarray | Sequence[int] | None,
    n: int,
    exclude: np.ndarray | Sequence[int] | None,
    quality_candidates: int | str | None,
) -> int:
    """:func:`kmq.select`'s budget in rows: ``budget`` resolved, or the rows ``budget_tokens``
    holds at the mean tokens per row (exactly one of the two given; ``tokens`` with
    ``budget_tokens``, and no quality candidates)."""
    if (budget is None) == (budget_tokens is None):
        raise ParameterError(
            "budget",
            "give {param} (rows, or a fraction of them) or budget_tokens (with tokens=...), "
            f"exactly one; got budget={budget!r}, budget_tokens={budget_tokens!r}",
        )
    if budget is not None:
        return resolve_budget(budget, n)
    if tokens is None:
        raise ParameterError("tokens", "{param} (one count per row) is needed with budget_tokens")
    if candidate_multiple(quality_candidates) is not None:
        raise ParameterError(
            "quality_candidates",
            "{param} needs row quotas; with budget_tokens every row's quality is read "
            f"(give None), got {quality_candidates!r}",
        )
    counts = check_tokens(np.asarray(tokens), n)
    return rows_for_tokens(int(budget_tokens or 0), counts, ~available_mask(n, exclude))
