"""``similarity`` feedback: 1 − cos(embed(y_gen), embed(y_gold)) with the pool's encoder."""

from __future__ import annotations

import numpy as np

from kmq.encoders import Encoder, get_encoder
from kmq.feedback.base import Prompts, Texts


class SimilarityFeedback:
    """Cheap, CPU-friendly: how far the generated answer is from the gold one in embedding space.

    S = 1 − cos(e(y_gen), e(y_gold)), range [0, 2]; higher = the generation misses the gold
    answer's content. It cannot tell a good gold answer from a bad one: a cluster of corrupted
    gold answers looks "far" and gains weight.
    """

    name = "similarity"
    direction = "higher = generated answer further from the gold one (1 - cosine); range [0, 2]"

    def __init__(self, *, encoder: str | Encoder = "minilm", batch_size: int = 64) -> None:
        self.encoder = get_encoder(encoder, batch_size=batch_size, show_progress=False)

    def score(self, prompts: Prompts, gold: Texts, generated: Texts) -> np.ndarray:
        vectors = self.encoder.encode([*gold, *generated])
        g, y = vectors[: len(gold)], vectors[len(gold) :]
        return 1.0 - np.einsum("ij,ij->i", g, y).astype(np.float64)
