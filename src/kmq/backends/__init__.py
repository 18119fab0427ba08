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
- ``llama-cpp``: llama.cpp (``llama-cpp-python``) on the model's GGUF file, on the CPU; nothing
  is converted (``smollm2`` runs the package's Q4_1 file, which ``torch`` dequantises).

The stable entry point for other modules is :func:`get_lm_backend`; its object offers
``nll(prompts, responses)`` (per-row mean NLL) and ``generate(prompts, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.backends.base import Prompt
from kmq.examples import Message
from kmq.quality.lm import NLLResult, Window
from kmq.registry import build, choose, load


@runtime_checkable
class LMBackend(Protocol):
    """One causal LM behind an inference engine.

    ``name``: the backend (one of :data:`LM_BACKENDS`); ``fingerprint()``: the model and every
    setting that changes a score (it keys score caches).
    """

    name: str
    batch_size: int

    @property
    def tokenizer(self) -> Any: ...

    def fingerprint(self) -> str: ...

    def score(
        self, prompts: Sequence[Prompt], responses: Sequence[str], *, desc: str = "scoring"
    ) -> NLLResult: ...

    def nll(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray: ...

    def windows_nll(self, windows: Sequence[Window], *, desc: str = "scoring") -> np.ndarray: ...

    def generate(
        self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256
    ) -> list[str]: ...


# Each backend's class, imported when the backend is chosen.
LM_BACKEND_CLASSES = {
    "torch": "kmq.backends.torch_lm:TorchLM",
    "ctranslate2": "kmq.backends.ctranslate2_lm:CTranslate2LM",
    "llama-cpp": "kmq.backends.llama_cpp_lm:LlamaCppLM",
}
LM_BACKENDS = tuple(LM_BACKEND_CLASSES)


def get_lm_backend(name: str = "torch", model: str = "smollm2", **settings: Any) -> LMBackend:
    """The ``name`` backend (one of :data:`LM_BACKENDS`) for ``model`` (``smollm2`` or a local
    causal-LM folder), loaded lazily on first use.

    ``settings`` are the backend's (:class:`~kmq.backends.torch_lm.TorchLM`,
    :class:`~kmq.backends.ctranslate2_lm.CTranslate2LM`): ``max_length``, ``batch_size``,
    ``cache_dir``, ``show_progress``; ``device`` (None = CUDA when available for ``torch``, else
    the CPU); ``dtype`` for ``torch``, ``compute_type`` for ``ctranslate2`` (default ``int8``).
    A run setting the backend does not take (``dtype`` for ``ctranslate2``) is left out, None
    stands for the default, and any other option the backend does not take is refused.
    """
    choose("lm_backend", name, LM_BACKENDS)
    backend: LMBackend = build(
        "LM backend", name, load(LM_BACKEND_CLASSES[name]), {"model": model, **settings}
    )
    return backend


def backend_of(owner: Any, lm_backend: str, **run: Any) -> LMBackend:
    """The ``lm_backend`` backend of a scorer that keeps its ``model``, ``max_length``,
    ``batch_size`` and ``cache_dir`` as attributes, with the run settings ``run`` (``device``,
    ``dtype``, ``compute_type``, ``show_progress``)."""
    return get_lm_backend(
        lm_backend,
        owner.model,
        max_length=owner.max_length,
        batch_size=owner.batch_size,
        cache_dir=owner.cache_dir,
        **run,
    )
