"""``perplexity`` feedback: the paper's Eq. 7, S = −log(PPL(x⊕y_gen) / PPL(x⊕y_gold))."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kmq.examples import Message
from kmq.feedback import gap


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
    ) -> None:
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._lm: tuple[Any, Any] | None = None

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray:
        from kmq.models import load_causal_lm
        from kmq.quality.lm import response_nll

        if self._lm is None:
            self._lm = load_causal_lm(self.model, cache_dir=self.cache_dir)
        model, tokenizer = self._lm

        def nll(prompts: list[Sequence[Message]], responses: list[str]) -> np.ndarray:
            return response_nll(
                model,
                tokenizer,
                prompts,
                responses,
                max_length=self.max_length,
                batch_size=self.batch_size,
            )

        return gap(nll, prompts, gold, generated)
