"""benchmarks/candidates.py: the subset keeps the sources' shares, the distances are right, and
the per-row NLL cache reuses rows by content."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import candidates


def test_stratified_subset_keeps_each_sources_share() -> None:
    records = [{"id": str(i), "source": "a" if i < 300 else "b"} for i in range(400)]
    rows = candidates.stratified_subset(records, 40, seed=0)
    assert len(rows) == len(set(rows.tolist())) == 40
    assert (rows < 300).sum() == 30  # 75% of the pool is source a
    assert np.array_equal(rows, candidates.stratified_subset(records, 40, seed=0))


def test_total_variation_of_inclusion_vectors() -> None:
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert candidates.total_variation(p, p * 3) == 0.0
    assert candidates.total_variation(p, p[::-1]) == 1.0


def test_both_ifd_directions_come_from_the_same_nlls() -> None:
    nll = np.array([[1.0, 2.0], [2.0, 1.5]])  # NLL(y|x), NLL(y): IFD < 1, then IFD > 1
    scores = list(candidates.ifd_scores(nll).values())
    assert scores[0].tolist() == [1.0, -0.5]  # kmq's ifd: -log IFD
    assert scores[1][0] == -1.0 and scores[1][1] < -50  # log IFD; IFD >= 1 to the bottom


def test_nll_cache_finds_rows_by_content(tmp_path: Path) -> None:
    cache = candidates.NLLCache(tmp_path / "nll.json")
    record = {"id": "a", "messages": [{"role": "user", "content": "q"}]}
    cache.rows[candidates.row_key(record)] = [1.0, 2.0, 10.0, 0.5]
    cache.save()
    again = candidates.NLLCache(tmp_path / "nll.json")
    renamed = {**record, "id": "b"}  # the same text under another id: the same row
    assert again.table([renamed]).tolist() == [[1.0, 2.0, 10.0, 0.5]]
    again.fill([renamed], max_length=8)  # nothing to score: no model is loaded
