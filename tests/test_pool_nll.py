"""benchmarks/pool_nll.py: rows found by content, and kmq's scores rebuilt from the NLL table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

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


def write_rows(path: Path, rows: list[Example]) -> None:
    path.write_text("".join(pool_nll.row_line(ex) for ex in rows), encoding="utf-8")


@pytest.mark.model
def test_score_checkpoints_records_its_scorer_and_resumes(tiny_llama: Path, tmp_path: Path) -> None:
    from kmq.quality.lm_scorers import PMIScorer

    rows = [example(i, f"question {i}?", "answer " * (i + 1)) for i in range(5)]
    write_rows(tmp_path / "rows.jsonl", rows)
    argv = ["score", str(tmp_path / "rows.jsonl"), "--model", str(tiny_llama), "--out"]
    table = tmp_path / "nll.npz"
    pool_nll.main([*argv, str(table), "--checkpoint", "2", "--max-length", "64"])
    direct = PMIScorer(model=str(tiny_llama), max_length=64, show_progress=False)
    direct.score(rows)
    cond, uncond = pool_nll.lookup(table, rows)
    np.testing.assert_allclose(cond, direct.results_[0].nll, rtol=1e-5)
    np.testing.assert_allclose(uncond, direct.results_[1].nll, rtol=1e-5)
    by = pool_nll.scored_by(table)
    assert by is not None and "max_length=64" in by and "dtype=float32" in by

    # an interrupted run (rows 3 and 4 not scored yet) resumes from its table
    with np.load(table) as data:
        assert int(data["scored"]) == 5
        cut = {name: data[name] for name in data.files}
    cut["nll_cond"][3:], cut["nll_uncond"][3:], cut["scored"] = np.nan, np.nan, np.array(3)
    np.savez(table, **cut)
    pool_nll.main([*argv, str(table), "--checkpoint", "2", "--max-length", "64"])
    np.testing.assert_allclose(pool_nll.lookup(table, rows)[0], cond, rtol=1e-5)

    # a scored row may be NaN (an empty response): the resume starts after the scored rows,
    # from the count when the table records it, after its last non-NaN row when it does not
    for legacy in (False, True):
        hole = {name: value.copy() for name, value in cut.items()}
        hole["nll_cond"][:2] = np.nan  # rows 0-2 scored, 0 and 1 NaN
        if legacy:
            del hole["scored"]
        np.savez(table, **hole)
        pool_nll.main([*argv, str(table), "--checkpoint", "2", "--max-length", "64"])
        resumed = pool_nll.lookup(table, rows)[0]
        assert np.isnan(resumed[:2]).all()  # not scored again: counting non-NaN rows would
        np.testing.assert_allclose(resumed[2:], cond[2:], rtol=1e-5)  # restart at row 1

    with pytest.raises(SystemExit, match="mix the two"):  # other settings, same table
        pool_nll.main([*argv, str(table), "--max-length", "32"])
    np.savez(table, **cut)
    write_rows(tmp_path / "rows.jsonl", rows[::-1])  # another rows file
    with pytest.raises(SystemExit, match="not the first rows"):
        pool_nll.main([*argv, str(table), "--max-length", "64"])
