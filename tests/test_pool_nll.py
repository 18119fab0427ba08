"""benchmarks/pool_nll.py: rows found by content, and kmq's scores rebuilt from the NLL table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pool_nll

from kmq.examples import Example, Message


def example(i: int, prompt: str, answer: str) -> Example:
    return Example(
        id=f"r{i}", row=i, messages=(Message("user", prompt), Message("assistant", answer))
    )


def test_lookup_by_content_and_scores_from_the_table(tmp_path: Path) -> None:
    rows = [example(0, "a?", "A."), example(1, "b?", "B."), example(2, "c?", "C.")]
    table = tmp_path / "nll.npz"
    keys = [pool_nll.row_key(rows[1]), pool_nll.row_key(rows[0])]  # order differs from rows
    np.savez(table, key=np.array(keys), nll_cond=np.array([2.0, 1.0]),
             nll_uncond=np.array([1.5, 3.0]))  # fmt: skip
    cond, uncond = pool_nll.lookup(table, rows)
    np.testing.assert_array_equal(cond[:2], [1.0, 2.0])
    assert np.isnan(cond[2]) and np.isnan(uncond[2])  # a row the table lacks is NaN
    known = rows[:2]
    np.testing.assert_allclose(pool_nll.table_quality(table, known, "pmi"), [2.0, -0.5])
    np.testing.assert_allclose(pool_nll.table_quality(table, known, "perplexity"), [-1.0, -2.0])


def test_the_key_is_the_prompt_and_the_response_not_the_id() -> None:
    a, b = example(0, "q", "x"), example(7, "q", "x")
    assert pool_nll.row_key(a) == pool_nll.row_key(b)
    assert pool_nll.row_key(a) != pool_nll.row_key(example(0, "q", "y"))
