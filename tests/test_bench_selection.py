"""benchmarks/selection.py: one arm per quality for the methods that read one, and the headline
compares each arm with random and with balanced km-random inside one Holm family."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import selection


def test_arms_split_the_quality_methods_by_quality() -> None:
    arms = selection.make_arms(["random", "kmq-balanced", "qdit"], ["pmi", "ifd"])
    assert [a.label for a in arms] == [
        "random",
        "kmq-balanced (pmi)",
        "kmq-balanced (ifd)",
        "qdit (pmi)",
        "qdit (ifd)",
    ]
    assert [a.quality for a in arms] == [None, "pmi", "ifd", "pmi", "ifd"]
    one = selection.make_arms(["kmq-balanced"], ["length"])
    assert one == [selection.Arm("kmq-balanced", "kmq-balanced", "length")]


def fake_rows(shares: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for method, values in shares.items():
        for seed, share in enumerate(values):
            metrics = {m: 0.5 + 0.01 * seed for m in selection.METRICS}
            metrics |= {"noisy share": share, "swap share": share}
            rows += [
                {"pool": pool, "method": method, "seed": seed, **metrics}
                for pool in ("clean", "noisy")
            ]
    return rows


def test_headline_tests_each_arm_against_random_and_km_random(tmp_path: Path) -> None:
    shares = {
        "random": [0.30, 0.28, 0.29, 0.31],
        "km-random-balanced": [0.29, 0.29, 0.30, 0.30],
        "kmq-balanced (pmi)": [0.10, 0.11, 0.09, 0.12],
    }
    args = argparse.Namespace(
        pool=Path("pool.jsonl"), budget=8, k=2, seeds=4, holdout=1, out=tmp_path
    )
    summary = {
        "rows": 100,
        "noisy": 30,
        "specs": [{"kind": "swap", "where": "spread", "noisy": 30}],
    }
    selection.report(args, "sel", fake_rows(shares), list(shares), "`pmi`", summary, 1.0)
    text = (tmp_path / "sel.md").read_text(encoding="utf-8")
    headline = text.split("### Headline")[1].split("###")[0]
    row = next(line for line in headline.splitlines() if line.startswith("| kmq-balanced (pmi)"))
    assert "| 0.105 | 0.36 |" in row  # of which swap; × random's: 0.105 / 0.295
    assert row.count(" *") == 2  # beats both baselines after Holm
    # the noisy share of 2 methods vs random and of kMQ vs km-random; the other metrics are
    # equal across methods seed by seed (zero spread: no test)
    assert "over the 3 comparisons" in text
    assert "kmq-balanced (pmi) − km-random-balanced | noisy share | -0.1900" in text
    assert (tmp_path / "sel.png").exists()
    assert np.isclose(float(row.split("|")[2].split("±")[0]), 0.105)


class WordCountFeedback:
    """A row-wise feedback: the gold answer's word count (reads no generation, no model)."""

    name = "word-count"
    direction = "higher = longer gold answer"

    def score(self, prompts: Any, gold: Any, generated: Any) -> np.ndarray:
        return np.array([len(g.split()) for g in gold], dtype=np.float64)


def word_count_loop(tmp_path: Path, **pool_settings: Any) -> Any:
    """A finished 3-round ``IterativeSelection`` (30 rows, k = 6, seed 3) of the test loop's
    pool with clusters of unequal sizes, with :class:`WordCountFeedback`; ``pool_settings`` set
    its quality and allocation."""
    from kmq.config import SelectConfig
    from kmq.loop import IterateConfig, IterativeSelection
    from tests.test_loop import UNEQUAL, FakeTrainer, TopicEncoder, write_pool

    pool = tmp_path / "pool.jsonl"
    write_pool(pool, topics=UNEQUAL)
    config = SelectConfig(
        input=str(pool),
        out="",
        budget=30,
        k=6,
        seed=3,
        encoder=TopicEncoder(),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        **pool_settings,
    )
    loop = IterativeSelection(
        tmp_path / "run",
        IterateConfig(pool=config, rounds=3, feedback="word-count"),
        trainer=FakeTrainer(),
        feedback=WordCountFeedback(),
    )
    loop.run()
    return loop


@pytest.mark.parametrize("allocation", ["balanced", "proportional"])
def test_iterate_picks_draw_exactly_as_the_loop(tmp_path: Path, allocation: str) -> None:
    loop = word_count_loop(
        tmp_path,
        quality="length",
        quality_weighting="standardized",
        quality_candidates=None,
        allocation=allocation,
    )
    examples = loop.examples(np.arange(90))

    def feedback(rows: np.ndarray) -> np.ndarray:
        return WordCountFeedback().score(None, [examples[i].response for i in rows], None)

    assert loop.quality is not None
    picks, weights = selection.iterate_picks(
        loop.embeddings,
        30,
        k=6,
        quality=loop.quality,
        exclude=np.zeros(0, dtype=np.int64),
        seed=3,
        feedback=feedback,
        rounds=3,
        quality_weighting="standardized",
        allocation=allocation,
    )
    assert np.array_equal(picks, np.concatenate([loop.picked(r) for r in (1, 2, 3)]))
    assert weights == [loop.dir.read("weights.json", r)["after"] for r in (1, 2)]
    assert np.ptp(weights[0]) > 0.01  # the feedback moved the weights: rounds 2-3 depend on it


def test_feedback_cache_scores_each_row_once(tmp_path: Path) -> None:
    from kmq.examples import Example, Message

    def example(i: int, answer: str) -> Example:
        turns = (Message("user", f"q{i}"), Message("assistant", answer))
        return Example(id=f"r{i}", messages=turns, row=i)

    cache = selection.FeedbackCache(tmp_path / "feedback.json", "word-count")
    calls: list[int] = []

    class Counting(WordCountFeedback):
        def score(self, prompts: Any, gold: Any, generated: Any) -> np.ndarray:
            calls.append(len(gold))
            return super().score(prompts, gold, generated)

    cache._scorer = Counting()
    clean = [example(0, "a b"), example(1, "a b c"), example(2, "d")]
    noisy = [clean[0], example(1, "c"), clean[2]]  # row 1's answer differs
    assert cache.scores(clean, np.array([0, 1])).tolist() == [2.0, 3.0]
    assert cache.scores(noisy, np.array([2, 0, 1])).tolist() == [1.0, 2.0, 1.0]
    assert calls == [2, 2]  # rows 2 and noisy 1 only: row 0 was scored with the clean pool
    again = selection.FeedbackCache(tmp_path / "feedback.json", "word-count")
    again._scorer = Counting()
    assert again.scores(noisy, np.array([1])).tolist() == [1.0]
    assert calls == [2, 2]  # read back from the file


def test_feedback_cache_saves_each_chunk_so_an_interrupted_call_resumes(tmp_path: Path) -> None:
    from kmq.examples import Example, Message

    rows = [
        Example(
            id=f"r{i}", messages=(Message("user", f"q{i}"), Message("assistant", "a " * i)), row=i
        )
        for i in range(1, 6)
    ]
    calls: list[int] = []

    class Failing(WordCountFeedback):
        def score(self, prompts: Any, gold: Any, generated: Any) -> np.ndarray:
            if calls:
                raise RuntimeError("killed")
            calls.append(len(gold))
            return super().score(prompts, gold, generated)

    path = tmp_path / "feedback.json"
    cache = selection.FeedbackCache(path, "word-count", chunk=2)
    cache._scorer = Failing()
    with pytest.raises(RuntimeError, match="killed"):
        cache.scores(rows, np.arange(5))
    assert sorted(json.loads(path.read_text()).values()) == [1.0, 2.0]  # the first chunk kept
    again = selection.FeedbackCache(path, "word-count", chunk=2)
    again._scorer = WordCountFeedback()
    assert again.scores(rows, np.arange(5)).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_report_on_the_noisy_pool_alone(tmp_path: Path) -> None:
    shares = {"random": [0.30, 0.28, 0.29], "kmq-balanced (pmi)": [0.10, 0.11, 0.09]}
    rows = [r for r in fake_rows(shares) if r["pool"] == "noisy"]
    args = argparse.Namespace(
        pool=Path("pool.jsonl"), budget=8, k=2, seeds=3, holdout=1, out=tmp_path
    )
    summary = {
        "rows": 100,
        "noisy": 30,
        "specs": [{"kind": "swap", "where": "spread", "noisy": 30}],
    }
    selection.report(args, "sel", rows, list(shares), "`pmi`", summary, 1.0)
    text = (tmp_path / "sel.md").read_text(encoding="utf-8")
    assert "### noisy pool" in text and "### clean pool" not in text
    assert "kmq-balanced (pmi) − random | noisy share | -0.1900" in text
    assert (tmp_path / "sel.png").exists()


def test_two_feedback_caches_on_one_file_keep_each_others_scores(tmp_path: Path) -> None:
    from kmq.examples import Example, Message

    rows = [
        Example(
            id=f"r{i}", messages=(Message("user", f"q{i}"), Message("assistant", "a " * i)), row=i
        )
        for i in range(1, 4)
    ]
    path = tmp_path / "feedback.json"
    first = selection.FeedbackCache(path, "word-count")
    second = selection.FeedbackCache(path, "word-count")  # both read the file before any write
    first._scorer = second._scorer = WordCountFeedback()
    first.scores(rows, np.array([0]))
    second.scores(rows, np.array([1, 2]))
    first.scores(rows, np.array([0]))  # nothing new: no write
    merged = json.loads(path.read_text())
    assert sorted(merged.values()) == [1.0, 2.0, 3.0]  # the second kept the first's score


def test_prepare_reads_the_table_only_for_the_pools_a_run_uses(tmp_path: Path) -> None:
    import pool_nll

    from kmq.formats import load_pool

    n = 64
    pool = tmp_path / "pool.jsonl"
    with pool.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = {
                "id": f"r{i}",
                "source": "ab"[i % 2],
                "messages": [
                    {"role": "user", "content": f"question number {i}?"},
                    {"role": "assistant", "content": f"The answer to {i}. It is {i * 7}. Done."},
                ],
            }
            fh.write(json.dumps(row) + "\n")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(n, 8)).astype(np.float32))
    clean = load_pool(pool).examples
    table = tmp_path / "nll.npz"  # the clean rows only, as a table scored for a clean run
    cond = rng.uniform(1, 2, n)
    np.savez(table, key=np.array([pool_nll.row_key(ex) for ex in clean]), nll_cond=cond,
             nll_uncond=cond + 0.5)  # fmt: skip
    args = argparse.Namespace(
        pool=pool,
        embeddings=tmp_path / "x.npy",
        noise_seed=0,
        run=tmp_path / "run",
        holdout=2,
        nll_table=table,
        quality_scores=None,
        noisy_quality_scores=None,
        budget=8,
        k=4,
    )
    args.run.mkdir()
    bench = selection.prepare(args, ["pmi"], ["clean"])
    assert set(bench.scores) == {("clean", "pmi")}
    np.testing.assert_allclose(bench.scores["clean", "pmi"], 0.5)
    assert bench.is_noisy.any()  # the noisy pool is still built, only not scored
    with pytest.raises(ValueError, match="not in the table"):
        selection.prepare(args, ["pmi"])  # both pools: the noisy rows are not in the table

    # the table extended with the noisy pool's rows: both pools scored, and the clean pool's
    # picks keep their key (the key holds the scores' values, not the table file's bytes)
    arm = selection.Arm("kmq-balanced-std", "kmq-balanced-std", "pmi")
    before = selection.selection_key(bench, "clean", arm, 0)
    noisy = load_pool(bench.noisy_path).examples
    extra = sorted({pool_nll.row_key(ex) for ex in noisy} - {pool_nll.row_key(ex) for ex in clean})
    longer = rng.uniform(1, 2, len(extra))
    np.savez(table, key=np.array([pool_nll.row_key(ex) for ex in clean] + extra),
             nll_cond=np.concatenate([cond, longer]),
             nll_uncond=np.concatenate([cond + 0.5, longer + 0.25]))  # fmt: skip
    both = selection.prepare(args, ["pmi"])
    assert selection.selection_key(both, "clean", arm, 0) == before
    np.savez(table, key=np.array([pool_nll.row_key(ex) for ex in clean]), nll_cond=cond,
             nll_uncond=cond + 0.75)  # other scores of the same rows: another key  # fmt: skip
    assert (
        selection.selection_key(selection.prepare(args, ["pmi"], ["clean"]), "clean", arm, 0)
        != before
    )
