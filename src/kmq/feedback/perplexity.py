"""``perplexity`` feedback: the paper's Eq. 7, S = −log(PPL(x⊕y_gen) / PPL(x⊕y_gold))."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.examples import Message
from kmq.feedback.base import gap


class PerplexityFeedback:
    """S = −log(PPL(y_gen | x) / PPL(y_gold | x)) = NLL(y_gold | x) − NLL(y_gen | x), per token.

    Both perplexities come from one reference causal LM (``model``, default SmolLM2), on the
    response tokens given the prompt. Range (−∞, ∞); higher = the gold answer is less likely
    than the model's own answer, i.e. the cluster still has more to teach. A corrupted (e.g.
    word-shuffled) gold answer is very unlikely, so it *raises* S: this scorer cannot starve a
    cluster of bad gold answers, it feeds it.
    """

    name = "perplexity"
    direction = "higher = gold answer less likely than the generation (nats/token); (-inf, inf)"

    def __init__(
        self,
        *,
        model: str = "smollm2",
        max_length: int = 512,
        batch_size: int = 8,
        cache_dir: str | None = None,
        device: str | None = None,
        lm_backend: str = "torch",
        compute_type: str | None = None,
    ) -> None:
        from kmq.backends import get_lm_backend

        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.backend_ = get_lm_backend(
            lm_backend,
            model,
            max_length=max_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            device=device,
            compute_type=compute_type,
        )

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray:
        return gap(self.backend_.nll, prompts, gold, generated)
