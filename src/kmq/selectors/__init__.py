"""Selection methods behind one interface; choose one by name with :func:`get_selector`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmq.registry import build, choose
from kmq.selectors.base import ClusterSelector, SelectionResult, Selector
from kmq.selectors.deita import DeitaSelector
from kmq.selectors.kcenter import KCenterSelector
from kmq.selectors.kmeans_closest import KMeansClosestSelector
from kmq.selectors.kmeans_random import KMeansRandomSelector
from kmq.selectors.kmq import KMQSelector
from kmq.selectors.qdit import FacilityLocationSelector, QDITSelector
from kmq.selectors.random import RandomSelector

SELECTORS: dict[str, type] = {
    "kmq": KMQSelector,
    "km-random": KMeansRandomSelector,
    "km-closest": KMeansClosestSelector,
    "k-center": KCenterSelector,
    "random": RandomSelector,
    "deita": DeitaSelector,
    "qdit": QDITSelector,
    "facility-location": FacilityLocationSelector,
}
CLUSTERED = {"kmq", "km-random", "km-closest"}


def get_selector(name: str, *, shared: Mapping[str, Any] | None = None, **options: Any) -> Selector:
    """The selector called ``name`` (a key of :data:`SELECTORS`) built with ``options``; an
    option it does not take is refused. ``shared`` settings are passed where taken (see
    :func:`kmq.registry.build`)."""
    choose("method", name, SELECTORS)
    selector: Selector = build("method", name, SELECTORS[name], options, shared=shared)
    return selector


__all__ = [
    "CLUSTERED",
    "SELECTORS",
    "ClusterSelector",
    "DeitaSelector",
    "FacilityLocationSelector",
    "KCenterSelector",
    "KMQSelector",
    "KMeansClosestSelector",
    "KMeansRandomSelector",
    "QDITSelector",
    "RandomSelector",
    "SelectionResult",
    "Selector",
    "get_selector",
]
