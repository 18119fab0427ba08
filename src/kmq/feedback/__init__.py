"""Feedback scorers S(x, y_gold, y_gen) for the iterative loop (Eq. 4).

Higher = the model is further from the gold answer on that row, so its cluster deserves more
weight next round. Each scorer documents its range. A row that could not be scored is NaN and
is left out of its cluster's mean (Eq. 5).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.errors import KmqError
from kmq.examples import Message

FEEDBACK_SCORERS = ("similarity", "perplexity", "reward-gap", "judge")


@runtime_checkable
class FeedbackScorer(Protocol):
    """``score`` returns one float per row: higher = more left to learn there."""

    name: str
    direction: str

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray: ...


def gap(
    measure: Callable[[list[Sequence[Message]], list[str]], np.ndarray],
    prompts: Sequence[Sequence[Message]],
    gold: Sequence[str],
    generated: Sequence[str],
) -> np.ndarray:
    """Eq. 4: measure(x ⊕ y_gold) − measure(x ⊕ y_gen), both sides in one batched call."""
    values = np.asarray(measure([*prompts, *prompts], [*gold, *generated]), dtype=np.float64)
    return values[: len(gold)] - values[len(gold) :]


def _factory(name: str) -> Callable[..., FeedbackScorer]:
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


def get_feedback_scorer(name: str, **options: Any) -> FeedbackScorer:
    """The feedback scorer called ``name``; options it does not take (or None) are ignored."""
    if name not in FEEDBACK_SCORERS:
        raise KmqError(f"feedback must be one of {', '.join(FEEDBACK_SCORERS)}; got {name!r}")
    factory = _factory(name)
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in accepted and v is not None})
