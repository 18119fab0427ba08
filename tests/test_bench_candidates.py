"""benchmarks/candidates.py and pool_nll.py: scores from the NLL table by row (NaN and absent
rows), the rows kMQ asks scores of, and the target's arithmetic."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import candidates
import pool_nll

from kmq.examples import Example, Message


def example(i: int, prompt: str, answer: str) -> Example:
    return Example(
        id=f"r{i}", row=i, messages=(Message("user", prompt), Message("assistant", answer))
    )


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, list[Example]]:
    """Four rows: IFD < 1, IFD > 1, an empty response (NaN NLLs), IFD < 1; keyed by content
    and stored out of order."""
    rows = [example(0, "a", "x"), example(1, "b", "y"), example(2, "c", ""), example(3, "d", "z")]
    cond = np.array([1.0, 2.0, np.nan, 0.5])
    uncond = np.array([2.0, 1.5, np.nan, 0.5 + math.log(4)])
    order = [2, 0, 3, 1]
    path = tmp_path / "nll.npz"
    np.savez(
        path,
        key=np.array([pool_nll.row_key(rows[i]) for i in order]),
        nll_cond=cond[order],
        nll_uncond=uncond[order],
    )
    return path, rows


def test_pmi_from_the_table_is_kmqs_pmi_with_nan_rows_lowest(
    table: tuple[Path, list[Example]],
) -> None:
    path, rows = table
    pmi = pool_nll.table_quality(path, rows, "pmi")
    assert pmi[[0, 1, 3]] == pytest.approx([1.0, -0.5, math.log(4)])
    assert pmi[2] == -0.5  # the empty response gets the lowest finite score


def test_ifd_from_the_table_is_cherrys_ifd_kept_below_one(
    table: tuple[Path, list[Example]],
) -> None:
    path, rows = table
    ifd = pool_nll.table_quality(path, rows, "ifd")
    assert ifd[[0, 3]] == pytest.approx([math.exp(-1.0), 0.25])
    assert ifd[1] == 0.0  # IFD >= 1: the prompt does not help, below every kept row
    assert ifd[2] == 0.0  # NaN: the lowest finite score


def test_a_row_missing_from_the_table_is_an_error_that_says_how_to_make_it(
    table: tuple[Path, list[Example]],
) -> None:
    path, rows = table
    with pytest.raises(ValueError, match=r"1 of the 5 rows are not in the table \(first: row 4\)"):
        pool_nll.table_quality(path, [*rows, example(4, "a", "changed")], "pmi")
    with pytest.raises(ValueError, match="quality must be one of pmi, pmi-total, ifd, perplexity; got .ppl."):
        pool_nll.table_quality(path, rows, "ppl")


def test_the_same_text_under_another_id_finds_its_row(table: tuple[Path, list[Example]]) -> None:
    path, rows = table
    renamed = Example(id="other", row=9, messages=rows[0].messages)
    assert pool_nll.table_quality(path, [renamed], "pmi").tolist() == [1.0]


def test_no_table_exits_with_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"pool_nll\.py rows"):
        candidates.main([])
    with pytest.raises(SystemExit, match="no such file"):
        pool_nll.require_table(tmp_path / "absent.npz")


def test_rows_scored_are_the_candidates_and_m_covering_every_cluster_is_full() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quality = rng.normal(size=200)
    full, scored_full = candidates.draw(x, labels, quality, budget=8, multiple=None, seed=1)
    one, scored_one = candidates.draw(x, labels, quality, budget=8, multiple=1, seed=1)
    cover, scored_cover = candidates.draw(x, labels, quality, budget=8, multiple=25, seed=1)
    assert (scored_full, scored_one, scored_cover) == (200, 8, 200)
    assert len(one) == 8
    assert np.array_equal(cover, full)


def runs(full: list[float], got: list[float], scored: int) -> list[dict[str, Any]]:
    """Noise shares of one kind: pmi full and M = 2 (ifd the same), seed by seed."""
    out = []
    for score in candidates.LM_SCORES:
        for setting, shares, rows in (("full", full, 100), ("M = 2", got, scored)):
            out += [
                {"kind": "k", "noise_seed": 0, "seed": s, "score": score, "setting": setting}
                | {"share": v, "scored": rows}
                for s, v in enumerate(shares)
            ]
    return out


def test_target_needs_ten_times_fewer_rows_and_a_share_within_ten_percent() -> None:
    close = runs([0.20, 0.22, 0.18], [0.21, 0.22, 0.19], scored=10)
    rows, within, no_worse = candidates.verdicts(close, 100, ["k"], [2])
    n = len(candidates.LM_SCORES)  # one verdict per LM score
    assert [r[3] for r in rows] == ["10.00×"] * n
    assert [r[6] for r in rows] == ["met"] * n and within == {2: n} and no_worse == {2: n}
    costly = runs([0.20, 0.22, 0.18], [0.21, 0.22, 0.19], scored=11)
    assert [r[6] for r in candidates.verdicts(costly, 100, ["k"], [2])[0]] == ["missed"] * n
    better = runs([0.20, 0.22, 0.18], [0.10, 0.12, 0.08], scored=10)
    rows, within, no_worse = candidates.verdicts(better, 100, ["k"], [2])
    assert str(rows[0][5]).startswith("-50%") and rows[0][6] == "missed" and rows[0][7] == "yes"
    assert within == {2: 0} and no_worse == {2: n}


def test_relative_change_interval_and_zero_spread() -> None:
    change, ci = candidates.relative_change(np.array([0.2, 0.2, 0.2]), np.array([0.3, 0.2, 0.4]))
    assert change == pytest.approx(0.5)
    assert ci is not None and ci[0] < 0.5 < ci[1]
    assert candidates.relative_change(np.full(3, 0.2), np.full(3, 0.3))[1] is None


def test_total_variation_of_inclusion_vectors() -> None:
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert candidates.total_variation(p, p * 3) == 0.0
    assert candidates.total_variation(p, p[::-1]) == 1.0
