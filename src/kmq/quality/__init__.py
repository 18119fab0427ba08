"""Quality scorers for kMQ: one float per example, higher = better, documented range.

A scorer's output column is ``<name>_score``. Scores are cached by content and scorer
fingerprint (see :func:`kmq.quality.cache.score_cached`); rows a scorer could not score are NaN
and are listed by the scorer's ``failures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.errors import KmqError
from kmq.examples import Example


@runtime_checkable
class QualityScorer(Protocol):
    """Scores examples; higher = the example is more worth training on.

    ``name`` names the output column (``<name>_score``); ``direction`` says in words what a
    high score means and the range; ``fingerprint()`` identifies the model and every setting
    that changes a score (it keys the cache).
    """

    name: str
    direction: str

    def fingerprint(self) -> str: ...

    def score(self, examples: Sequence[Example]) -> np.ndarray: ...


QUALITY_SCORERS = ("ifd", "perplexity", "judge", "reward", "length", "column")


def get_quality_scorer(name: str, **options: Any) -> QualityScorer:
    """The scorer called ``name`` (one of ``QUALITY_SCORERS``) built with ``options``."""
    if name not in QUALITY_SCORERS:
        raise KmqError(f"quality scorer must be one of {', '.join(QUALITY_SCORERS)}; got {name!r}")
    if name == "judge":
        from kmq.quality.judge import make_judge

        return make_judge(**options)
    if name == "reward":
        from kmq.quality.reward import RewardScorer

        return RewardScorer(**options)
    if name in ("ifd", "perplexity"):
        from kmq.quality.lm import IFDScorer, PerplexityScorer

        cls: type = IFDScorer if name == "ifd" else PerplexityScorer
        return cls(**options)
    from kmq.quality.heuristics import ColumnScorer, LengthScorer

    cls = LengthScorer if name == "length" else ColumnScorer
    return cls(**options)
