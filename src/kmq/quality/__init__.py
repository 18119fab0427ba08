"""Quality scorers for kMQ: one float per example, higher = better, documented range.

A scorer's output column is ``<name>_score``. Scores are cached by content and scorer
fingerprint, per row (see :func:`kmq.quality.cache.score_cached`); rows a scorer could not score
are NaN, are listed in the scorer's ``failures_`` after ``score``, and are never cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.examples import Example
from kmq.registry import build, check_options, choose


@runtime_checkable
class QualityScorer(Protocol):
    """Scores examples; higher = the example is more worth training on.

    ``name`` names the output column (``<name>_score``); ``direction`` says in words what a
    high score means and the range; ``fingerprint()`` identifies the model and every setting
    that changes a score (it keys the cache). A scorer may set ``cacheable = False`` when its
    score does not follow from the conversation (the score cache then leaves it out).
    """

    name: str
    direction: str

    def fingerprint(self) -> str: ...

    def score(self, examples: Sequence[Example]) -> np.ndarray: ...


QUALITY_SCORERS = ("ifd", "pmi", "pmi-total", "perplexity", "judge", "reward", "length", "column")


def _factory(name: str) -> Callable[..., QualityScorer]:
    if name == "judge":
        from kmq.quality.judge import make_judge

        return make_judge
    if name == "reward":
        from kmq.quality.reward import RewardScorer

        return RewardScorer
    if name == "ifd":
        from kmq.quality.lm_scorers import IFDScorer

        return IFDScorer
    if name == "pmi":
        from kmq.quality.lm_scorers import PMIScorer

        return PMIScorer
    if name == "pmi-total":
        from kmq.quality.lm_scorers import PMITotalScorer

        return PMITotalScorer
    if name == "perplexity":
        from kmq.quality.lm_scorers import PerplexityScorer

        return PerplexityScorer
    from kmq.quality.heuristics import ColumnScorer, LengthScorer

    return LengthScorer if name == "length" else ColumnScorer


def get_quality_scorer(
    name: str, *, shared: Mapping[str, Any] | None = None, **options: Any
) -> QualityScorer:
    """The scorer called ``name`` (one of ``QUALITY_SCORERS``) built with ``options``.

    ``None`` means "the scorer's default"; an option the scorer does not take is refused.
    ``shared`` settings (the cache folder, the device) are passed where taken (see
    :func:`kmq.registry.build`).
    """
    choose("quality", name, QUALITY_SCORERS)
    return build("quality scorer", name, _factory(name), options, shared=shared)


def check_quality_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options the scorer ``name`` does not take, before anything is loaded."""
    choose("quality", name, QUALITY_SCORERS)
    check_options("quality scorer", name, _factory(name), options)
