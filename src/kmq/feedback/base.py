"""Eq. 4's gap, which the feedback scorers built on one measure share (a leaf of the package:
the scorers import it, the package's registry imports them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kmq.examples import Message


def gap(
    measure: Callable[[list[Sequence[Message]], list[str]], np.ndarray],
    prompts: Sequence[Sequence[Message]],
    gold: Sequence[str],
    generated: Sequence[str],
) -> np.ndarray:
    """Eq. 4: measure(x ⊕ y_gold) − measure(x ⊕ y_gen), both sides in one batched call."""
    values = np.asarray(measure([*prompts, *prompts], [*gold, *generated]), dtype=np.float64)
    return values[: len(gold)] - values[len(gold) :]
