"""What every LM backend shares (a leaf module, so the backends need not import the package)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kmq.examples import Message
from kmq.quality.lm import NLLResult, Window, score_windows

Prompt = Sequence[Message] | None


class WindowedLM:
    """What every backend shares: rows become :mod:`kmq.quality.lm` windows (one tokenisation
    for all backends) and their per-window NLLs become an :class:`NLLResult`.

    A backend supplies ``max_length``, a ``tokenizer`` property and ``windows_nll``.
    """

    max_length: int

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    def windows_nll(self, windows: Sequence[Window], *, desc: str = "scoring") -> np.ndarray:
        raise NotImplementedError

    def score(
        self, prompts: Sequence[Prompt], responses: Sequence[str], *, desc: str = "scoring"
    ) -> NLLResult:
        """NLL of each response after its prompt, with the windows' details."""
        return score_windows(
            self.tokenizer,
            prompts,
            responses,
            max_length=self.max_length,
            run=lambda windows: self.windows_nll(windows, desc=desc),
        )

    def nll(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """Mean NLL (nats/token) of each response after its prompt; NaN = not scored."""
        return self.score(prompts, responses).nll
