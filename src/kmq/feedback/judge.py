"""``judge`` feedback: S = rating(x⊕y_gold) − rating(x⊕y_gen) with the Deita-style judge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.examples import Message
from kmq.feedback.base import gap


class JudgeFeedback:
    """The judge's expected 1–6 rating of the gold answer minus that of the generated one.

    Range [−5, 5]; higher = the generation is rated below the gold answer (more to learn). A
    local chat model (default SmolLM2) or any OpenAI-compatible endpoint (``backend="http"``,
    ``base_url``) does the rating; see :mod:`kmq.quality.judge`.
    """

    name = "judge"
    direction = "higher = gold answer rated above the generation; range [-5, 5]"

    def __init__(
        self,
        *,
        backend: str = "local",
        model: str = "smollm2",
        base_url: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        from kmq.quality.judge import make_judge

        self.judge = make_judge(
            backend=backend, model=model, base_url=base_url, cache_dir=cache_dir
        )

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray:
        return gap(self.judge.rate, prompts, gold, generated)
