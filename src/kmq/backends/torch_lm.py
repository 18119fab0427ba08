"""The ``torch`` backend: transformers, the reference every other backend is measured against."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kmq.backends.base import WindowedLM
from kmq.examples import Message
from kmq.models import load_causal_lm, model_identity
from kmq.quality.lm import Window, check_settings, windows_nll


class TorchLM(WindowedLM):
    """A causal LM run by transformers (``dtype`` on ``device``; see :func:`get_lm_backend`)."""

    name = "torch"

    def __init__(
        self,
        model: str = "smollm2",
        *,
        max_length: int = 512,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        dtype: Any = "float32",
        show_progress: bool = False,
    ) -> None:
        check_settings(max_length, batch_size)
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.device = device
        self.dtype = dtype
        self.show_progress = show_progress
        self._lm: tuple[Any, Any] | None = None

    def fingerprint(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{model_identity(self.model)}/max_length={self.max_length}/dtype={dtype}"

    @property
    def lm(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded by :func:`kmq.models.load_causal_lm` on first use."""
        if self._lm is None:
            self._lm = load_causal_lm(
                self.model, cache_dir=self.cache_dir, dtype=self.dtype, device=self.device
            )
        return self._lm

    @property
    def tokenizer(self) -> Any:
        return self.lm[1]

    def windows_nll(self, windows: Sequence[Window], *, desc: str = "scoring") -> np.ndarray:
        model, tokenizer = self.lm
        return windows_nll(
            model,
            windows,
            pad_id=tokenizer.pad_token_id,
            batch_size=self.batch_size,
            show_progress=self.show_progress,
            desc=desc,
        )

    def generate(
        self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256
    ) -> list[str]:
        """Greedy answers to ``prompts`` (see :func:`kmq.training.generate.generate`)."""
        from kmq.training.generate import GenerationConfig, generate_loaded

        model, tokenizer = self.lm
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, batch_size=self.batch_size, backend="transformers"
        )
        return generate_loaded(model, tokenizer, prompts, config, show_progress=self.show_progress)
