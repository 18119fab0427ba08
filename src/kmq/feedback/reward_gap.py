"""``reward-gap`` feedback: S = RM(x⊕y_gold) − RM(x⊕y_gen) (Eq. 4 with a reward model)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.examples import Message
from kmq.feedback.base import gap


class RewardGapFeedback:
    """How much more the reward model likes the gold answer than the model's own.

    Range (−∞, ∞) in reward-logit units; higher = the model's answer falls further short of the
    gold one, so its cluster deserves more weight. A corrupted gold answer earns a low reward,
    so the gap shrinks or turns negative: of the scorers here, this one (and the judge) can
    starve a cluster of bad data, as the paper claims.
    """

    name = "reward-gap"
    direction = "higher = gold answer rewarded above the generation; range (-inf, inf)"

    def __init__(self, *, model: str, max_length: int = 1024, batch_size: int = 8) -> None:
        from kmq.quality.reward import RewardScorer

        self.scorer = RewardScorer(model, max_length=max_length, batch_size=batch_size)

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray:
        return gap(self.scorer.reward, prompts, gold, generated)
