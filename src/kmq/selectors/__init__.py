"""Selection methods behind one interface; choose one by name with :func:`get_selector`."""

from __future__ import annotations

import inspect
from typing import Any

from kmq.errors import KmqError
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


def get_selector(name: str, **options: Any) -> Selector:
    """The selector called ``name`` built with the options it accepts (others are ignored)."""
    try:
        cls = SELECTORS[name]
    except KeyError:
        raise KmqError(f"method must be one of {', '.join(SELECTORS)}; got {name!r}") from None
    accepted = inspect.signature(cls).parameters
    selector: Selector = cls(**{k: v for k, v in options.items() if k in accepted})
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
