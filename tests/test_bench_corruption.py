"""benchmarks/corruption.py: its replay of the loop draws exactly as ``kmq iterate`` draws."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import corruption

from tests.test_bench_selection import word_count_loop


class WordCountReference:
    """Stands in for the reference LM: every row's summed PMI is its answer's word count, so
    ``gold-pmi`` gives the word-count feedback of :func:`word_count_loop`."""

    def missing(self, prompts: Any, answers: Any) -> int:
        return 0

    def pmi(self, prompts: Any, answers: Any) -> tuple[np.ndarray, np.ndarray]:
        words = np.array([len(a.split()) for a in answers], dtype=np.float64)
        return words, words


def test_replay_draws_exactly_as_the_loop(tmp_path: Path) -> None:
    from kmq.pipeline import cluster

    loop = word_count_loop(tmp_path, quality=None)
    labels = cluster(loop.embeddings, 6, seed=3)[0].labels_
    replayed = corruption.replay(
        WordCountReference(),  # type: ignore[arg-type]
        loop.examples(np.arange(len(loop.embeddings))),
        loop.embeddings,
        labels,
        scorer="gold-pmi",
        rounds=3,
        rows=10,
        seed=3,
    )["rounds"]
    for r, step in enumerate(replayed, start=1):
        assert step["picked"] == loop.picked(r).tolist()
    after = [step["weights_after"] for step in replayed[:2]]
    assert after == [loop.dir.read("weights.json", r)["after"] for r in (1, 2)]
    assert np.ptp(after[0]) > 0.01  # the feedback moved the weights: rounds 2-3 depend on it
