"""The local engine: every step in this process (the reference the other engines match)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import numpy as np

from kmq.cache import CacheArgs, embed_cached
from kmq.clustering import DEFAULT_NITER, Clustering, kmeans
from kmq.encoders import Encoder
from kmq.random import SeedLike
from kmq.selectors import SelectionResult, Selector
from kmq.selectors.base import SelectArgs


class LocalEngine:
    """Embedding, k-means and selection in this process, as :mod:`kmq.pipeline` always ran."""

    name = "local"

    def embed(
        self, texts: Sequence[str], encoder: Encoder, **cache: Unpack[CacheArgs]
    ) -> tuple[np.ndarray, bool]:
        return embed_cached(texts, encoder, **cache)

    def kmeans(
        self, embeddings: np.ndarray, k: int, *, seed: SeedLike = 0, niter: int = DEFAULT_NITER
    ) -> Clustering:
        return kmeans(embeddings, k, seed=seed, niter=niter)

    def select(
        self, selector: Selector, embeddings: np.ndarray, budget: int, **inputs: Unpack[SelectArgs]
    ) -> SelectionResult:
        return selector.select(embeddings, budget, **inputs)
