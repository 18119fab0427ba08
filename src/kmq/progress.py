"""Progress that moves: encoders report finished batches to the bar of the pass they run in,
and ``--no-progress``/``-q`` quiet the bars of the libraries kmq loads models with."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_report: ContextVar[Callable[[float], None] | None] = ContextVar("kmq_progress", default=None)

# What huggingface_hub reads on import (and transformers, which loads models through it, follows).
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextmanager
def reporting(callback: Callable[[float], None]) -> Iterator[None]:
    """Send :func:`advance` calls made inside the block to ``callback``."""
    token = _report.set(callback)
    try:
        yield
    finally:
        _report.reset(token)


def advance(rows: float) -> None:
    """Report ``rows`` more input rows done (a fraction of a row is fine) to the running pass."""
    callback = _report.get()
    if callback is not None:
        callback(rows)


def reporting_active() -> bool:
    """Whether a pass is listening (then an encoder's own bar would only duplicate it)."""
    return _report.get() is not None


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide the progress bars of huggingface_hub and transformers (model downloads, "Loading
    weights", and so sentence-transformers' loading) for the block: the environment switch for
    modules imported inside it, the modules' own switches for those already imported. Restores
    both afterwards (a module imported inside the block keeps its bars off)."""
    saved = {key: os.environ.get(key) for key in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    restore: list[Callable[[], None]] = []
    hub = sys.modules.get("huggingface_hub")
    if hub is not None and not hub.utils.are_progress_bars_disabled():
        hub.utils.disable_progress_bars()
        restore.append(hub.utils.enable_progress_bars)
    transformers = sys.modules.get("transformers")
    if transformers is not None and transformers.utils.logging.is_progress_bar_enabled():
        transformers.utils.logging.disable_progress_bar()
        restore.append(transformers.utils.logging.enable_progress_bar)
    try:
        yield
    finally:
        for undo in restore:
            undo()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
