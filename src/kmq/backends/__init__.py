"""Inference backends for one causal LM: per-row response NLL and text generation.

Every LM-based step (the ``ifd`` / ``pmi`` / ``perplexity`` quality scores, the ``perplexity``
feedback, the evaluation NLL) asks a backend for the mean NLL of each response after its
prompt; every backend shares the text, the tokenisation and the ``max_length`` window of
:mod:`kmq.quality.lm`, so they score the very same tokens and differ only in arithmetic.

- ``torch`` (default, the reference): transformers in float32 (or ``dtype``), on ``device``.
- ``ctranslate2``: CTranslate2 on the CPU (or CUDA); the model is converted once into
  ``<cache>/models/ct2-<model identity>-<quantization>`` (``compute_type`` ``int8``,
  ``int8_float32``, ``float32``, ...). See ``benchmarks/results/lm_backend.md`` for its speed
  and fidelity against ``torch``.

The stable entry point for other modules is :func:`get_lm_backend`; its object offers
``nll(prompts, responses)`` (per-row mean NLL) and ``generate(prompts, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.backends.base import Prompt
from kmq.errors import KmqError
from kmq.examples import Message
from kmq.quality.lm import NLLResult, Window

LM_BACKENDS = ("torch", "ctranslate2")


@runtime_checkable
class LMBackend(Protocol):
    """One causal LM behind an inference engine.

    ``name``: the backend (one of :data:`LM_BACKENDS`); ``fingerprint()``: the model and every
    setting that changes a score (it keys score caches).
    """

    name: str
    batch_size: int

    def fingerprint(self) -> str: ...

    def score(
        self, prompts: Sequence[Prompt], responses: Sequence[str], *, desc: str = "scoring"
    ) -> NLLResult: ...

    def nll(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray: ...

    def windows_nll(self, windows: Sequence[Window], *, desc: str = "scoring") -> np.ndarray: ...

    def generate(
        self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256
    ) -> list[str]: ...


def get_lm_backend(
    name: str = "torch",
    model: str = "smollm2",
    *,
    max_length: int = 512,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: Any = "float32",
    compute_type: str | None = None,
    show_progress: bool = False,
) -> LMBackend:
    """The ``name`` backend (one of :data:`LM_BACKENDS`) for ``model`` (``smollm2`` or a local
    causal-LM folder), loaded lazily on first use.

    ``dtype`` applies to ``torch``; ``compute_type`` to ``ctranslate2`` (default ``int8``).
    ``device``: None = CUDA when available (``torch``), else the CPU.
    """
    if name == "torch":
        from kmq.backends.torch_lm import TorchLM

        return TorchLM(
            model,
            max_length=max_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            device=device,
            dtype=dtype,
            show_progress=show_progress,
        )
    if name == "ctranslate2":
        from kmq.backends.ctranslate2_lm import CTranslate2LM

        return CTranslate2LM(
            model,
            max_length=max_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            device=device or "cpu",
            compute_type=compute_type or "int8",
            show_progress=show_progress,
        )
    raise KmqError(f"lm_backend must be one of {', '.join(LM_BACKENDS)}; got {name!r}")
