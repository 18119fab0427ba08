"""Feedback scorers S(x, y_gold, y_gen) for the iterative loop (Eq. 4).

Higher = the cluster deserves more weight next round (for the paper's Eq. 4 scorers: the model
is further from the gold answer on that row). Each scorer documents its range. A row that could
not be scored is NaN and is left out of its cluster's mean (Eq. 5).

``gold-pmi`` judges the gold answer alone and needs no generated answer; a scorer says so with
``needs_generation = False`` and the loop then skips generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.examples import Message
from kmq.registry import build, check_options, choose

FEEDBACK_SCORERS = ("gold-pmi", "pmi-gap", "similarity", "perplexity", "reward-gap", "judge")
DEFAULT_FEEDBACK = "similarity"


@runtime_checkable
class FeedbackScorer(Protocol):
    """``score`` returns one float per row: higher = its cluster deserves more weight.

    An optional class attribute ``needs_generation`` (default True) set to False says that
    ``score`` ignores ``generated``, so the loop need not generate.
    """

    name: str
    direction: str

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray: ...


def needs_generation(scorer: FeedbackScorer) -> bool:
    """Whether ``scorer`` reads the generated answers (True unless it says otherwise)."""
    return bool(getattr(scorer, "needs_generation", True))


def _factory(name: str) -> Callable[..., FeedbackScorer]:
    if name == "gold-pmi":
        from kmq.feedback.pmi import GoldPMIFeedback

        return GoldPMIFeedback
    if name == "pmi-gap":
        from kmq.feedback.pmi import PMIGapFeedback

        return PMIGapFeedback
    if name == "similarity":
        from kmq.feedback.similarity import SimilarityFeedback

        return SimilarityFeedback
    if name == "perplexity":
        from kmq.feedback.perplexity import PerplexityFeedback

        return PerplexityFeedback
    if name == "reward-gap":
        from kmq.feedback.reward_gap import RewardGapFeedback

        return RewardGapFeedback
    from kmq.feedback.judge import JudgeFeedback

    return JudgeFeedback


def check_feedback_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse a feedback scorer ``name`` that does not exist or an option it does not take,
    before anything is loaded."""
    choose("feedback", name, FEEDBACK_SCORERS)
    check_options("feedback scorer", name, _factory(name), options)


def get_feedback_scorer(
    name: str, *, shared: Mapping[str, Any] | None = None, **options: Any
) -> FeedbackScorer:
    """The feedback scorer called ``name`` built with ``options`` (None: the scorer's default;
    an option it does not take is refused); ``shared`` settings are passed where taken."""
    choose("feedback", name, FEEDBACK_SCORERS)
    return build("feedback scorer", name, _factory(name), options, shared=shared)
