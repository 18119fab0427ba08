"""Random: a uniform sample of the budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.random import SeedLike, make_rng
from kmq.selectors.base import SelectionResult, available_mask, check_budget


class RandomSelector:
    """Uniform sample without replacement (the paper's Random baseline)."""

    name = "random"

    def select(
        self,
        embeddings: np.ndarray,
        budget: int,
        *,
        labels: np.ndarray | None = None,
        quality: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        seed: SeedLike = 0,
    ) -> SelectionResult:
        mask = available_mask(len(embeddings), exclude)
        candidates = np.flatnonzero(mask)
        check_budget(budget, len(candidates))
        indices = make_rng(seed).choice(candidates, size=int(budget), replace=False)
        reason = f"uniform draw from the {len(candidates)} rows available"
        return SelectionResult(
            method=self.name,
            budget=int(budget),
            indices=indices.astype(np.int64),
            scores=np.full(len(indices), np.nan),
            score_name="none",
            reasons=[reason] * len(indices),
            labels=labels,
        )
