"""Plugins chosen by name (selectors, quality scorers, feedback scorers): one rule for the
options they take.

An option a plugin does not take is refused with the options it does take (a misspelt
``temprature=5`` must not build the default temperature); ``None`` stands for the plugin's
default. Settings of a whole run that only some plugins read (:data:`RUN_SETTINGS`: the device,
the LM backend, the cache folder, the progress bars) are offered: each plugin gets those it
takes, from its options or from ``shared``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kmq.errors import ParameterError

T = TypeVar("T")

RUN_SETTINGS = ("device", "lm_backend", "compute_type", "dtype", "cache_dir", "show_progress")


def options_of(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword options ``factory`` takes (None: any, it takes ``**kwargs``)."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in parameters if p.kind in keyword}


def check_options(
    kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """``options`` without the ``None`` ones and the :data:`RUN_SETTINGS`; a
    :class:`ParameterError` names the first one ``factory`` does not take."""
    given = {
        key: value
        for key, value in options.items()
        if value is not None and key not in RUN_SETTINGS
    }
    accepted = options_of(factory)
    unknown = [] if accepted is None else sorted(set(given) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted or ())) or "none"
        raise ParameterError(
            unknown[0], f"{kind} {name!r} takes no option {{param}} (its options: {takes})"
        )
    return given


def build(
    kind: str,
    name: str,
    factory: Callable[..., T],
    options: Mapping[str, Any],
    *,
    shared: Mapping[str, Any] | None = None,
) -> T:
    """``factory(**options)`` after :func:`check_options`, with the run settings and the
    ``shared`` settings it takes (an option given explicitly wins)."""
    given = check_options(kind, name, factory, options)
    accepted = options_of(factory)
    run = {key: value for key, value in options.items() if key in RUN_SETTINGS}
    offered = {
        key: value
        for key, value in (dict(shared or {}) | run).items()
        if value is not None and key not in given and (accepted is None or key in accepted)
    }
    return factory(**given, **offered)


def choose(parameter: str, name: Any, names: Mapping[str, Any] | tuple[str, ...]) -> None:
    """Refuse a plugin ``name`` that is not one of ``names``, listing them."""
    if name not in names:
        raise ParameterError(
            parameter, f"{{param}} must be one of {', '.join(names)}; got {name!r}"
        )
