from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kmq.errors import KmqError
from kmq.examples import Message
from kmq.feedback import FEEDBACK_SCORERS, get_feedback_scorer
from kmq.feedback.base import gap
from kmq.feedback.similarity import SimilarityFeedback
from tests.conftest import FakeEncoder

PROMPTS = [[Message("user", "What is 2 + 2?")], [Message("user", "Name a colour.")]]


def test_gap_is_eq4_in_one_batched_call() -> None:
    calls = []

    def measure(prompts: list, responses: list[str]) -> np.ndarray:
        calls.append(len(responses))
        return np.array([len(r) for r in responses], dtype=float)

    out = gap(measure, PROMPTS, ["four", "blue"], ["4", "a nice green"])
    assert out.tolist() == [3.0, -8.0]  # measure(gold) - measure(generated)
    assert calls == [4]


def test_similarity_is_one_minus_cosine() -> None:
    scorer = SimilarityFeedback(encoder=FakeEncoder())
    same = scorer.score(PROMPTS, ["four", "blue"], ["four", "blue"])
    assert np.allclose(same, 0.0, atol=1e-6)
    other = scorer.score(PROMPTS, ["four", "blue"], ["seven", "red"])
    enc = FakeEncoder()
    g, y = enc.encode(["four", "blue"]), enc.encode(["seven", "red"])
    assert np.allclose(other, 1 - (g * y).sum(1), atol=1e-6)


def test_perplexity_feedback_is_zero_when_the_model_says_the_gold(tiny_llama: Path) -> None:
    scorer = get_feedback_scorer("perplexity", model=str(tiny_llama), batch_size=2)
    same = scorer.score(PROMPTS, ["four", "blue"], ["four", "blue"])
    assert np.allclose(same, 0.0, atol=1e-6)
    differ = scorer.score(PROMPTS, ["four", "blue"], ["four four four", "blue"])
    assert differ[0] != 0.0 and differ[1] == pytest.approx(0.0, abs=1e-6)


def test_unknown_scorer_lists_the_valid_ones() -> None:
    with pytest.raises(KmqError, match=", ".join(FEEDBACK_SCORERS)):
        get_feedback_scorer("bleu")
