"""Where the heavy steps run: in this process (``local``), or on a Ray cluster (``ray``).

An engine embeds (into the embedding cache), assigns rows to k-means centres and draws the
per-cluster picks. Every engine gives the local engine's selection for the same seed, whatever
its number of workers: k-means is fitted on the driver in both, every row is assigned in the
same 65 536-row chunks, and every cluster draws from its own random stream. Choose one by name
with :func:`get_engine` (``kmq select --engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, Unpack

import numpy as np

from kmq._imports import require
from kmq.cache import CacheArgs
from kmq.clustering import DEFAULT_NITER, Clustering
from kmq.encoders import Encoder
from kmq.engines.local import LocalEngine
from kmq.errors import ParameterError
from kmq.random import SeedLike
from kmq.registry import choose
from kmq.selectors import SelectionResult, Selector
from kmq.selectors.base import SelectArgs


class Engine(Protocol):
    """The steps of a selection that an engine may spread over machines."""

    name: str

    def embed(
        self, texts: Sequence[str], encoder: Encoder, **cache: Unpack[CacheArgs]
    ) -> tuple[np.ndarray, bool]:
        """Embeddings of ``texts`` from the cache (filled first if needed), and whether they
        were all there already."""
        ...

    def kmeans(
        self, embeddings: np.ndarray, k: int, *, seed: SeedLike = 0, niter: int = DEFAULT_NITER
    ) -> Clustering:
        """:func:`kmq.clustering.kmeans`: centres fitted on the driver, every row assigned."""
        ...

    def select(
        self, selector: Selector, embeddings: np.ndarray, budget: int, **inputs: Unpack[SelectArgs]
    ) -> SelectionResult:
        """``selector.select(...)``, with the per-cluster picks drawn wherever the engine runs."""
        ...


def _ray_engine(**options: Any) -> Engine:
    require("ray")
    from kmq.engines.ray import RayEngine

    return RayEngine(**options)


ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "ray": _ray_engine}
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {"local": (), "ray": ("address", "workers")}


def get_engine(name: str = "local", **options: Any) -> Engine:
    """The engine called ``name`` with its ``options`` (``ray``: ``address``, ``workers``; see
    :class:`kmq.engines.ray.RayEngine`). Nothing is started until the engine is used. Errors
    name ``engine`` and ``engine_options['KEY']``, as :class:`~kmq.config.SelectConfig` does."""
    choose("engine", name, ENGINES)
    given = {key: value for key, value in options.items() if value is not None}
    allowed = ENGINE_OPTIONS[name]
    for key in given:
        if key in allowed:
            continue
        owner = next((engine for engine, opts in ENGINE_OPTIONS.items() if key in opts), None)
        if owner is not None:
            raise ParameterError(
                f"engine_options[{key!r}]",
                f"{{param}} is an option of the {owner} engine; got {{engine}} {name!r}",
                "engine",
            )
        raise ParameterError(
            f"engine_options[{key!r}]",
            f"{{param}} is not an option of the {name} engine (its options: "
            f"{', '.join(allowed) or 'none'})",
        )
    try:
        return ENGINES[name](**given)
    except ParameterError as exc:
        if exc.parameter not in given:
            raise
        raise exc.renamed(f"engine_options[{exc.parameter!r}]") from None


__all__ = ["ENGINES", "Engine", "LocalEngine", "get_engine"]
