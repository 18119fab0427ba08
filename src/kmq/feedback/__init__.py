"""Feedback scorers S(x, y_gold, y_gen) for the iterative loop (Eq. 4).

Higher = the cluster deserves more weight next round (for the paper's Eq. 4 scorers: the model
is further from the gold answer on that row). Each scorer documents its range. A row that could
not be scored is NaN and is left out of its cluster's mean (Eq. 5).

``gold-sound`` (the default), ``gold-fit`` and ``gold-pmi`` judge the gold answer alone and need
no generated answer; a scorer says so with ``needs_generation = False`` and the loop then skips
generation. The default is the one that, in ``benchmarks/results/corruption.md``, starves every
kind of planted noise in every seed and does not pile a clean pool's weight onto one source
(``gold-fit`` starves the noise too, but also clean GSM8K and T0); the paper's Eq. 4-7 scorers
(``similarity``, ``perplexity``, ``reward-gap``, ``judge``) are a ``--feedback`` flag away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.feedback.base import Prompts, Texts
from kmq.registry import build, check_options, choose, load

# Each scorer's class, imported when the scorer is chosen.
FEEDBACK_FACTORIES = {
    "gold-sound": "kmq.feedback.pmi:GoldSoundFeedback",
    "gold-fit": "kmq.feedback.pmi:GoldFitFeedback",
    "gold-pmi": "kmq.feedback.pmi:GoldPMIFeedback",
    "pmi-gap": "kmq.feedback.pmi:PMIGapFeedback",
    "similarity": "kmq.feedback.similarity:SimilarityFeedback",
    "perplexity": "kmq.feedback.perplexity:PerplexityFeedback",
    "reward-gap": "kmq.feedback.reward_gap:RewardGapFeedback",
    "judge": "kmq.feedback.judge:JudgeFeedback",
}
FEEDBACK_SCORERS = tuple(FEEDBACK_FACTORIES)
DEFAULT_FEEDBACK = "gold-sound"


@runtime_checkable
class FeedbackScorer(Protocol):
    """``score`` returns one float per row: higher = its cluster deserves more weight.

    An optional class attribute ``needs_generation`` (default True) set to False says that
    ``score`` ignores ``generated``, so the loop need not generate.
    """

    name: str
    direction: str

    def score(self, prompts: Prompts, gold: Texts, generated: Texts) -> np.ndarray: ...


def needs_generation(scorer: FeedbackScorer | Callable[..., FeedbackScorer]) -> bool:
    """Whether ``scorer`` (or its class) reads the generated answers (True unless it says
    otherwise)."""
    return bool(getattr(scorer, "needs_generation", True))


def reads_generation(name: str) -> bool:
    """Whether the feedback scorer called ``name`` reads the generated answers (its class's
    ``needs_generation``; nothing is loaded)."""
    choose("feedback", name, FEEDBACK_SCORERS)
    return needs_generation(_factory(name))


def _factory(name: str) -> Callable[..., FeedbackScorer]:
    factory: Callable[..., FeedbackScorer] = load(FEEDBACK_FACTORIES[name])
    return factory


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
