"""Feedback scorers S(x, y_gold, y_gen) for the iterative loop (Eq. 4).

Higher = the cluster deserves more weight next round (for the paper's Eq. 4 scorers: the model
is further from the gold answer on that row). Each scorer documents its range. A row that could
not be scored is NaN and is left out of its cluster's mean (Eq. 5).

``gold-fit`` (the default) and ``gold-pmi`` judge the gold answer alone and need no generated
answer; a scorer says so with ``needs_generation = False`` and the loop then skips generation.
The default is the one that starved every kind of planted noise in
``benchmarks/results/corruption.md``; the paper's Eq. 4-7 scorers (``similarity``,
``perplexity``, ``reward-gap``, ``judge``) are a ``--feedback`` flag away.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.errors import KmqError
from kmq.examples import Message

FEEDBACK_SCORERS = (
    "gold-fit",
    "gold-pmi",
    "pmi-gap",
    "similarity",
    "perplexity",
    "reward-gap",
    "judge",
)
DEFAULT_FEEDBACK = "gold-fit"


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


def gap(
    measure: Callable[[list[Sequence[Message]], list[str]], np.ndarray],
    prompts: Sequence[Sequence[Message]],
    gold: Sequence[str],
    generated: Sequence[str],
) -> np.ndarray:
    """Eq. 4: measure(x ⊕ y_gold) − measure(x ⊕ y_gen), both sides in one batched call."""
    values = np.asarray(measure([*prompts, *prompts], [*gold, *generated]), dtype=np.float64)
    return values[: len(gold)] - values[len(gold) :]


def needs_generation(scorer: FeedbackScorer) -> bool:
    """Whether ``scorer`` reads the generated answers (True unless it says otherwise)."""
    return bool(getattr(scorer, "needs_generation", True))


def _factory(name: str) -> Callable[..., FeedbackScorer]:
    if name == "gold-fit":
        from kmq.feedback.pmi import GoldFitFeedback

        return GoldFitFeedback
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


def get_feedback_scorer(name: str, **options: Any) -> FeedbackScorer:
    """The feedback scorer called ``name``; options it does not take (or None) are ignored."""
    if name not in FEEDBACK_SCORERS:
        raise KmqError(f"feedback must be one of {', '.join(FEEDBACK_SCORERS)}; got {name!r}")
    factory = _factory(name)
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in accepted and v is not None})
