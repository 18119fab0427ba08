"""benchmarks/quality/margin.py: the held-out rows' corruptions are the planted noise's kinds,
drawn reproducibly; the margins are the hand-computed differences; a real model scores them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path[:0] = [str(BENCH / "quality"), str(BENCH)]

import margin  # noqa: E402

from kmq.examples import Message  # noqa: E402

ROWS = [
    margin.HeldRow("a0", "a", (Message("user", "q0"),), "First one. Then two more words."),
    margin.HeldRow("a1", "a", (Message("user", "q1"),), "ok"),
    margin.HeldRow("b0", "b", (Message("user", "q2"),), "Only one sentence here"),
    margin.HeldRow("b1", "b", (Message("user", "q3"),), "Line one\nline two"),
]


def test_corruptions_are_the_noise_kinds_and_reproducible() -> None:
    got = margin.corruptions(ROWS, seed=0)
    assert got == margin.corruptions(ROWS, seed=0)
    assert set(got) == {"shuffle", "swap", "truncate"}
    # "ok" has one word: it cannot be shuffled; the others are, into a different order
    assert [i for i, _ in got["shuffle"]] == [0, 2, 3]
    for i, text in got["shuffle"]:
        assert text != ROWS[i].answer and sorted(text.split()) == sorted(ROWS[i].answer.split())
    # truncate keeps the first sentence or line, only where that changes the answer
    assert got["truncate"] == [(0, "First one."), (3, "Line one")]
    # every row gets a donor answer from the other source
    assert [i for i, _ in got["swap"]] == [0, 1, 2, 3]
    for i, text in got["swap"]:
        donors = {r.answer for r in ROWS if r.source != ROWS[i].source}
        assert text in donors
    shuffles = {tuple(margin.corruptions(ROWS, seed=s)["shuffle"]) for s in range(8)}
    assert len(shuffles) > 1  # the seed is used


def test_a_pool_of_one_source_has_no_swap_donor() -> None:
    one = [r for r in ROWS if r.source == "a"]
    assert margin.corruptions(one, seed=0)["swap"] == []


def test_summarize_is_the_mean_per_token_difference_per_kind() -> None:
    clean_sum = np.array([2.0, 1.0, 3.0, 4.0])
    clean_tokens = np.array([4, 2, 3, 8])  # per token: 0.5, 0.5, 1.0, 0.5
    corrupted: dict[str, list[tuple[int, str]]] = {
        "shuffle": [(0, "x"), (2, "y")],
        "swap": [(1, "z")],
        "truncate": [(3, "w")],
    }
    scored = {
        "shuffle": (np.array([6.0, 4.0]), np.array([4, 2])),  # 1.5 - 0.5, 2.0 - 1.0
        "swap": (np.array([3.0]), np.array([1])),  # 3.0 - 0.5
        "truncate": (np.array([0.4]), np.array([2])),  # 0.2 - 0.5
    }
    out = margin.summarize(ROWS, clean_sum, clean_tokens, corrupted, scored)
    assert out["kinds"] == pytest.approx({"shuffle": 1.0, "swap": 2.5, "truncate": -0.3})
    assert out["n"] == {"shuffle": 2, "swap": 1, "truncate": 1}
    assert out[margin.MARGIN] == pytest.approx((1.0 + 2.5 - 0.3) / 3)
    # per source, token-weighted like the harness's held-out NLL
    assert out["clean"] == pytest.approx({"a": 3.0 / 6, "b": 7.0 / 11})
    with pytest.raises(ValueError, match="'swap'"):
        margin.summarize(ROWS, clean_sum, clean_tokens, corrupted | {"swap": []}, scored)


def test_a_real_model_scores_the_margins(tiny_llama: Path) -> None:
    from kmq.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_llama), device="cpu")
    out: dict[str, Any] = margin.noise_margin(model, tokenizer, ROWS, seed=0, max_length=64)
    assert out["n"] == {"shuffle": 3, "swap": 4, "truncate": 2}
    assert all(np.isfinite(v) for v in out["kinds"].values())
    assert out[margin.MARGIN] == pytest.approx(np.mean(list(out["kinds"].values())))
    assert set(out["clean"]) == {"a", "b"} and all(v > 0 for v in out["clean"].values())
    again = margin.noise_margin(model, tokenizer, ROWS, seed=0, max_length=64)
    assert again == out
