"""Candidate-only quality scoring (``--quality-candidates``): kMQ scores M × quota candidates
per cluster and draws among them; M covering a cluster reproduces full scoring exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kmq.scoring
from kmq.cli import main
from kmq.clustering import kmeans
from kmq.config import SelectConfig
from kmq.errors import KmqError
from kmq.loop import IterativeSelection
from kmq.pipeline import select, select_file
from kmq.selectors import KMQSelector
from kmq.selectors.kmq import candidate_multiple, draw_candidates
from tests.conftest import make_blobs
from tests.test_loop import FakeTrainer, WordOverlapFeedback, make_config
from tests.test_loop import write_pool as write_loop_pool
from tests.test_pipeline import config, write_pool

X, _ = make_blobs(300, 9, seed=3)
LABELS = kmeans(X, 9, seed=0).labels_
QUALITY = np.random.default_rng(5).random(len(X))
SIGNED = np.random.default_rng(6).normal(size=len(X))


def same_selection(a: Any, b: Any) -> bool:
    return (
        np.array_equal(a.indices, b.indices)
        and np.array_equal(a.scores, b.scores)
        and a.reasons == b.reasons
        and np.array_equal(a.quotas, b.quotas)
    )


@settings(max_examples=40, deadline=None)
@given(
    budget=st.integers(1, 250),
    seed=st.integers(0, 2**32),
    excluded=st.sets(st.integers(0, len(X) - 1), max_size=50),
    signed=st.booleans(),
    weighted=st.booleans(),
)
def test_candidates_covering_every_cluster_reproduce_full_scoring(
    budget: int, seed: int, excluded: set[int], signed: bool, weighted: bool
) -> None:
    quality = SIGNED if signed else QUALITY
    weights = np.random.default_rng(seed % 1000).random(9) + 0.1 if weighted else None
    exclude = np.array(sorted(excluded), dtype=np.int64)
    budget = min(budget, len(X) - len(exclude))
    args = dict(labels=LABELS, weights=weights, exclude=exclude, seed=seed)
    full = KMQSelector().select(X, budget, quality=quality, **args)  # type: ignore[arg-type]
    covering = KMQSelector(candidates=len(X))
    rows = covering.candidate_rows(len(X), budget, **args)  # type: ignore[arg-type]
    partial = np.full(len(X), np.nan)
    partial[rows] = quality[rows]  # only the candidates' scores are known
    got = covering.select(X, budget, quality=partial, **args)  # type: ignore[arg-type]
    assert same_selection(got, full)


@settings(max_examples=40, deadline=None)
@given(
    budget=st.integers(1, 200),
    multiple=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    excluded=st.sets(st.integers(0, len(X) - 1), max_size=50),
)
def test_candidate_draw_properties(
    budget: int, multiple: int, seed: int, excluded: set[int]
) -> None:
    exclude = np.array(sorted(excluded), dtype=np.int64)
    budget = min(budget, len(X) - len(exclude))
    selector = KMQSelector(candidates=multiple)
    rows = selector.candidate_rows(len(X), budget, labels=LABELS, exclude=exclude, seed=seed)
    partial = np.full(len(X), np.nan)
    partial[rows] = QUALITY[rows]
    result = selector.select(X, budget, labels=LABELS, quality=partial, exclude=exclude, seed=seed)
    assert result.quotas is not None
    assert len(result) == budget  # the exact budget
    assert len(set(result.indices.tolist())) == budget  # no duplicates
    assert set(result.indices.tolist()) <= set(rows.tolist())  # picks are candidates
    assert not set(rows.tolist()) & excluded  # excluded rows are never candidates
    available = np.bincount(np.delete(LABELS, exclude), minlength=9)
    per_cluster = np.bincount(LABELS[rows], minlength=9)
    assert np.array_equal(per_cluster, np.minimum(multiple * result.quotas, available))
    assert np.array_equal(np.bincount(LABELS[result.indices], minlength=9), result.quotas)
    again = selector.select(X, budget, labels=LABELS, quality=partial, exclude=exclude, seed=seed)
    assert same_selection(again, result)  # same seed ⇒ same selection


def test_one_candidate_per_quota_row_is_a_uniform_draw() -> None:
    """M = 1: the candidates are exactly the quota, so quality cannot change the picks."""
    selector = KMQSelector(candidates=1)
    rows = selector.candidate_rows(len(X), 27, labels=LABELS, seed=4)
    for quality in (QUALITY, 1 - QUALITY):
        result = selector.select(X, 27, labels=LABELS, quality=quality, seed=4)
        assert sorted(result.indices.tolist()) == rows.tolist()
        assert "candidates of" in result.reasons[0]


def test_a_cluster_draws_its_candidates_whatever_the_other_clusters() -> None:
    selector = KMQSelector(candidates=2)
    plan = selector.plan(len(X), 27, labels=LABELS, seed=1)
    other = LABELS.copy()
    other[other == 8] = 9  # a tenth cluster, and a different quota for cluster 8
    changed = selector.plan(len(X), 27, labels=other, seed=1)
    assert plan.quotas[0] == changed.quotas[0]
    first = draw_candidates(plan, 2).members(0)
    assert np.array_equal(first, draw_candidates(changed, 2).members(0))
    assert len(first) == 2 * plan.quotas[0] < len(plan.members(0))
    reseeded = selector.plan(len(X), 27, labels=LABELS, seed=2)
    assert not np.array_equal(first, draw_candidates(reseeded, 2).members(0))


def test_a_missing_score_among_the_candidates_is_an_error() -> None:
    selector = KMQSelector(candidates=2)
    rows = selector.candidate_rows(len(X), 27, labels=LABELS, seed=0)
    partial = np.full(len(X), np.nan)
    partial[rows[1:]] = QUALITY[rows[1:]]
    with pytest.raises(KmqError, match=r"1 of the 54 rows that may be drawn have a NaN"):
        selector.select(X, 27, labels=LABELS, quality=partial, seed=0)


@pytest.mark.parametrize("value", [-1, 1.5, "some", True])
def test_bad_candidate_multiples_name_the_parameter(value: object) -> None:
    with pytest.raises(KmqError, match=r"^quality_candidates must be"):
        candidate_multiple(value)  # type: ignore[arg-type]
    assert candidate_multiple(0) is None and candidate_multiple("all") is None
    assert candidate_multiple(np.int64(0)) is None and candidate_multiple(np.int64(3)) == 3


def test_select_calls_a_quality_function_with_the_candidates_only() -> None:
    asked: list[np.ndarray] = []

    def score(rows: np.ndarray) -> np.ndarray:
        asked.append(rows)
        return QUALITY[rows]

    result = select(X, 27, labels=LABELS, quality=score, quality_candidates=2, seed=0)
    assert len(asked) == 1 and len(asked[0]) == 54
    generator = np.random.default_rng(0)  # a Generator seeds the candidates and the draw alike
    select(X, 27, labels=LABELS, quality=score, quality_candidates=2, seed=generator)
    asked.pop()
    assert set(result.indices.tolist()) <= set(asked[0].tolist())
    full = select(X, 27, labels=LABELS, quality=score, seed=0)
    assert len(asked[1]) == len(X)
    assert same_selection(full, select(X, 27, labels=LABELS, quality=QUALITY, seed=0))
    with pytest.raises(KmqError, match="method='kmq' only"):
        select(X, 27, method="deita", quality=QUALITY, quality_candidates=2)


def test_select_file_scores_only_the_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    scored: list[int] = []
    score_rows = kmq.scoring.score_rows

    def counting(scorer: Any, examples: Any, rows: np.ndarray, **kw: Any) -> Any:
        scored.append(len(rows))
        return score_rows(scorer, examples, rows, **kw)

    monkeypatch.setattr(kmq.scoring, "score_rows", counting)
    runs = {
        name: select_file(
            config(tmp_path, pool, quality="length", quality_candidates=m, out=str(tmp_path / name))
        )
        for name, m in (("all", "all"), ("1", 1), ("60", 60))
    }
    n = runs["all"].manifest.counts["valid"]
    assert scored == [n, 12, n]  # budget 12: one candidate per quota row
    info = runs["1"].manifest.quality
    assert info["rows_scored"] == 12 and info["candidates"] == 1 and info["missing"] == 0
    assert runs["all"].manifest.quality["candidates"] is None
    # M covering every cluster: the very same output as full scoring
    table = "selection.parquet"
    assert (tmp_path / "60" / table).read_bytes() == (tmp_path / "all" / table).read_bytes()
    # deita ranks every row's quality: it scores them all whatever M
    deita = select_file(
        config(tmp_path, pool, method="deita", quality="length", out=str(tmp_path / "deita"))
    )
    assert deita.manifest.quality["rows_scored"] == n


def test_cli_takes_quality_candidates(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    out = tmp_path / "out"
    common = ["--budget", "12", "--k", "4", "--quality", "length", "--no-progress"]
    common += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(["select", str(pool), *common, "--quality-candidates", "2"]) == 0
    with pytest.raises(SystemExit):
        main(["select", str(pool), *common, "--quality-candidates", "-2"])


def test_iterate_scores_each_rounds_candidates_only(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_loop_pool(pool)

    def run(name: str, candidates: int | str) -> IterativeSelection:
        cfg = make_config(tmp_path, pool)
        cfg.pool.quality = "length"
        cfg.pool.quality_candidates = candidates
        loop = IterativeSelection(
            tmp_path / name, cfg, trainer=FakeTrainer(), feedback=WordOverlapFeedback()
        )
        loop.run()
        return loop

    partial, full, covering = run("m2", 2), run("all", "all"), run("m90", 90)
    for r in (1, 2, 3):
        picked = partial.dir.read("picked.json", r)
        quotas = np.array(picked["quotas"])
        left = np.bincount(
            np.delete(partial.labels, partial.picked_before(r)), minlength=len(quotas)
        )
        assert picked["quality_scored"] == int(np.minimum(2 * quotas, left).sum()) < left.sum()
        assert full.dir.read("picked.json", r)["quality_scored"] == 90
        assert np.array_equal(covering.picked(r), full.picked(r))
    lengths = [float(len(ex.response)) for ex in partial.examples(partial.picked(1))]
    assert partial.dir.read("picked.json", 1)["quality"] == lengths
    table = "final/selection.parquet"
    assert (covering.dir.path / table).read_bytes() == (full.dir.path / table).read_bytes()


def test_select_config_validates_quality_candidates(tmp_path: Path) -> None:
    bad = SelectConfig(input="x", out=str(tmp_path), quality_candidates=-3)
    with pytest.raises(KmqError, match="got -3"):
        bad.validate()
