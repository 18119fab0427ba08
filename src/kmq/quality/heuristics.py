"""Scorers that need no model: response length, and a numeric field of the input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kmq.errors import KmqError, ParameterError
from kmq.examples import Example


class LengthScorer:
    """``length_score``: characters in the last assistant turn ("long is more for alignment").

    Range [0, ∞); higher = longer response.
    """

    name = "length"
    direction = "higher = longer response (characters of the last assistant turn); range [0, inf)"

    def fingerprint(self) -> str:
        return "length/chars/v1"

    def score(self, examples: Sequence[Example]) -> np.ndarray:
        return np.array([len(ex.response) for ex in examples], dtype=np.float64)


class ColumnScorer:
    """``column_score``: a numeric field of each input record, as given (higher = better).

    Not cached (``cacheable``): the value lives in the record, not in the conversation the
    score cache is keyed by, and reading it costs nothing.
    """

    name = "column"
    cacheable = False

    def __init__(self, *, field: str) -> None:
        if not field:
            raise ParameterError(
                "quality_field", "the column scorer needs the field to read ({param})"
            )
        self.field = field
        self.direction = f"the input's '{field}' field as given; higher = better"

    def fingerprint(self) -> str:
        return f"column/{self.field}"

    def score(self, examples: Sequence[Example]) -> np.ndarray:
        out = np.empty(len(examples), dtype=np.float64)
        for i, ex in enumerate(examples):
            value = ex.fields.get(self.field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise KmqError(f"row {ex.row} (id {ex.id!r}): field '{self.field}' is not a number")
            if not math.isfinite(value):
                raise KmqError(f"row {ex.row} (id {ex.id!r}): field '{self.field}' is {value}")
            out[i] = value
        return out
