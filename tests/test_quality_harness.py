"""The quality benchmark's own logic: caching and resume of the grid, hold-out, verdicts.

The expensive stages (select, train, evaluate) are replaced by counting fakes; the evaluation
primitives themselves are tested in test_evaluation.py.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path[:0] = [str(BENCH / "quality"), str(BENCH)]

import harness  # noqa: E402
from harness import (  # noqa: E402
    Grid,
    Job,
    Protocol,
    Stages,
    flat_metrics,
    holdout_ids,
    metric_table,
    paired_differences,
)

from tests.conftest import FakeEncoder  # noqa: E402

SOURCES = ("alpha", "beta", "gamma")


def write_pool(path: Path, per_source: int = 12) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for source in SOURCES:
            for i in range(per_source):
                row = {
                    "id": f"{source}-{i}",
                    "source": source,
                    "messages": [
                        {"role": "user", "content": f"question {i} about {source}"},
                        {"role": "assistant", "content": f"answer {i}"},
                    ],
                }
                fh.write(json.dumps(row) + "\n")
    return path


class FakeStages:
    """Counts calls per stage; ``fail_on`` raises inside that (stage, job name) once."""

    def __init__(self, fail_on: tuple[str, str] | None = None) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.fail_on = fail_on

    def _hit(self, stage: str, job: Job) -> None:
        if self.fail_on == (stage, job.name):
            self.fail_on = None
            raise RuntimeError(f"crash in {stage} of {job.name}")
        self.calls[(stage, job.name)] += 1

    def select(self, job: Job, grid: Grid) -> tuple[list[str], dict[str, Any]]:
        self._hit("select", job)
        held = set(json.loads(grid.holdout_path.read_text()))
        ids = [ex.id for ex in grid.pool.examples if ex.id not in held]
        return ids[: grid.protocol.budget], {}

    def train(self, job: Job, grid: Grid, examples: list[Any]) -> Path:
        self._hit("train", job)
        assert len(examples) == grid.protocol.budget
        job.checkpoint.mkdir(parents=True)
        return job.checkpoint

    def evaluate(self, job: Job, grid: Grid, checkpoint: Path | None) -> dict[str, Any]:
        self._hit("evaluate", job)
        assert (checkpoint is None) == (job.method == "base")
        offset = 0.0 if job.seed is None else 0.01 * (job.seed + 1)
        return {
            "suites": {"gsm8k": 2.0 - offset, "arc-easy": 0.3 + offset},
            "holdout": {"alpha": 1.5 - offset},
        }

    def stages(self) -> Stages:
        return Stages(select=self.select, train=self.train, evaluate=self.evaluate)


@pytest.fixture
def protocol(tmp_path: Path) -> Protocol:
    pool = write_pool(tmp_path / "pool.jsonl")
    return Protocol(
        pool=str(pool),
        eval_dir=str(tmp_path),
        holdout_per_source=2,
        budget=5,
        seeds=(0, 1),
        methods=("random", "kmq-balanced"),
        suites=("gsm8k", "arc-easy"),
    )


def make_grid(protocol: Protocol, out: Path, fake: FakeStages) -> Grid:
    return Grid(protocol, out, out / "cache", stages=fake.stages(), log_file=out / "log.txt")


def test_grid_runs_every_job_once_and_caches(protocol: Protocol, tmp_path: Path) -> None:
    fake = FakeStages()
    make_grid(protocol, tmp_path / "out", fake).run()
    assert fake.calls[("evaluate", "base")] == 1
    assert ("select", "base") not in fake.calls
    for seed in (0, 1):
        for method in ("random", "kmq-balanced"):
            for stage in ("select", "train", "evaluate"):
                assert fake.calls[(stage, f"{method} seed {seed}")] == 1
    again = FakeStages()
    grid = make_grid(protocol, tmp_path / "out", again)
    grid.run()
    assert not again.calls
    assert len(grid.results()) == 5
    assert "5 of 5 jobs already done" in (tmp_path / "out" / "log.txt").read_text()


def test_interrupted_run_resumes_without_redoing_finished_stages(
    protocol: Protocol, tmp_path: Path
) -> None:
    crashing = FakeStages(fail_on=("train", "kmq-balanced seed 1"))
    with pytest.raises(RuntimeError, match="crash in train"):
        make_grid(protocol, tmp_path / "out", crashing).run()
    resumed = FakeStages()
    make_grid(protocol, tmp_path / "out", resumed).run()
    assert set(resumed.calls) == {
        ("train", "kmq-balanced seed 1"),
        ("evaluate", "kmq-balanced seed 1"),
    }


def test_extending_seeds_or_eval_settings_recomputes_only_what_changed(
    protocol: Protocol, tmp_path: Path
) -> None:
    make_grid(protocol, tmp_path / "out", FakeStages()).run()
    more_seeds = FakeStages()
    make_grid(replace(protocol, seeds=(0, 1, 2)), tmp_path / "out", more_seeds).run()
    assert {name for _, name in more_seeds.calls} == {"random seed 2", "kmq-balanced seed 2"}

    new_eval = FakeStages()
    make_grid(replace(protocol, eval_items=7), tmp_path / "out", new_eval).run()
    assert {stage for stage, _ in new_eval.calls} == {"evaluate"}
    assert len(new_eval.calls) == 5

    new_budget = FakeStages()
    make_grid(replace(protocol, budget=6), tmp_path / "out", new_budget).run()
    assert new_budget.calls[("select", "random seed 0")] == 1
    assert ("evaluate", "base") not in new_budget.calls


def test_holdout_is_stratified_seeded_and_excluded(protocol: Protocol, tmp_path: Path) -> None:
    grid = make_grid(protocol, tmp_path / "out", FakeStages())
    held = grid.holdout
    assert Counter(ex.source for ex in held) == dict.fromkeys(SOURCES, 2)
    again = holdout_ids(grid.pool.examples, 2, protocol.holdout_seed)
    assert again == [ex.id for ex in held]
    assert holdout_ids(grid.pool.examples, 2, protocol.holdout_seed + 1) != again
    assert len(holdout_ids(grid.pool.examples, 100, 0)) == len(grid.pool.examples)


def test_unknown_method_or_suite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        Protocol(pool="p", eval_dir="e", methods=("kmq-ultra",))
    with pytest.raises(ValueError, match="unknown suites"):
        Protocol(pool="p", eval_dir="e", suites=("bbh",))


def test_metrics_aggregate_suites_and_holdout() -> None:
    row = {
        "method": "random",
        "seed": 0,
        "seconds": {"select": 1.0, "train": 2.0, "evaluate": 3.0},
        "suites": {"gsm8k": 2.0, "humaneval": 1.0, "arc-easy": 0.5, "mmlu": 0.25},
        "holdout": {"a": 1.0, "b": 3.0},
    }
    metrics = flat_metrics(row)
    assert metrics["mean NLL"] == pytest.approx(1.5)
    assert metrics["mean acc"] == pytest.approx(0.375)
    assert metrics["held-out NLL"] == pytest.approx(2.0)
    assert metrics["seconds"] == pytest.approx(6.0)
    assert metric_table([row, row | {"seed": 1}])["random"]["mean NLL"] == [1.5, 1.5]


def nll_row(method: str, seed: int, nll: float) -> dict[str, Any]:
    return {"method": method, "seed": seed, "suites": {"gsm8k": nll}, "seconds": {}}


def test_paired_differences_are_per_shared_seed() -> None:
    results = [nll_row("a", s, 1.0 + 0.01 * s) for s in range(3)]
    results += [nll_row("b", s, 1.2 + 0.011 * s) for s in (0, 2, 5)]
    diffs = paired_differences(results, "a", "b", "mean NLL")
    assert diffs == pytest.approx([-0.2, -0.202])  # seeds 0 and 2 only
    assert paired_differences(results, "a", "missing", "mean NLL") is None


def test_ordering_table_holm_corrects_and_never_lets_zero_spread_hold() -> None:
    from report import ordering_table

    def rows(method: str, nll: list[float]) -> list[dict[str, Any]]:
        return [nll_row(method, s, v) for s, v in enumerate(nll)]

    results = (
        rows("kmq-balanced", [1.0, 1.1, 1.2])
        + rows("km-random-balanced", [1.1, 1.2, 1.3])  # kmq lower by exactly 0.1 every seed
        + rows("random", [1.30, 1.41, 1.49])  # km-random lower by 0.2, 0.21, 0.19
        + rows("kmq-proportional", [1.0])
        + rows("km-random-proportional", [1.0])
    )
    table, verdicts = ordering_table(results, {r["method"] for r in results})
    assert "kmq-balanced > km-random-balanced on mean NLL: n/a (zero spread)" in verdicts
    assert "kmq-proportional > km-random-proportional on mean NLL: n/a (one seed)" in verdicts
    # the only testable cell, so Holm leaves its p alone: t = −0.2 / (0.01 / √3) = −√1200 on
    # 2 df, where P(|T| > |t|) = 1 − |t| / √(2 + t²) = 1 − √(1200 / 1202); d_z = −0.2 / 0.01
    assert "km-random-balanced > random on mean NLL: holds" in verdicts
    assert f"p_Holm {1 - math.sqrt(1200 / 1202):.3g} (n=3)" in table
    assert "d_z -20.00" in table
    assert "km-random-balanced > random on held-out NLL" not in " ".join(verdicts)


def test_real_select_stage_records_k_and_stage_timings(
    protocol: Protocol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The select stage reads the manifest's real keys (``clusters.k`` and ``timings_s``)."""
    real_config = harness._select_config

    def offline(job: Job, grid: Grid, out: Path) -> Any:
        return replace(real_config(job, grid, out), encoder=FakeEncoder())

    monkeypatch.setattr(harness, "_select_config", offline)
    protocol = replace(protocol, k=3, quality="length")
    grid = make_grid(protocol, tmp_path / "out", FakeStages())
    jobs = {job.name: job for job in grid.jobs()}
    ids, info = harness._select(jobs["kmq-balanced seed 0"], grid)
    assert len(ids) == protocol.budget
    assert info["k"] == 3
    assert {"load", "embed", "cluster", "select"} <= set(info["stages"])
    assert all(isinstance(v, float) for v in info["stages"].values())
    _, random_info = harness._select(jobs["random seed 0"], grid)
    assert random_info["k"] is None and random_info["stages"]


def test_report_of_a_partial_grid_names_the_grid_command_and_its_compute(
    protocol: Protocol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from report import write_results
    from run import grid_command

    out = tmp_path / "out"
    make_grid(replace(protocol, seeds=(0,)), out, FakeStages()).run()
    grid = make_grid(protocol, out, FakeStages())
    path = write_results(
        grid,
        tmp_path / "results",
        preset="default",
        seconds=0.0,
        command="python benchmarks/quality/run.py --seeds 0,1",
    )
    text = path.read_text(encoding="utf-8")
    assert "**partial: 3 of 5 jobs finished**" in text
    assert "python benchmarks/quality/run.py --seeds 0,1\n" in text
    results = grid.results()
    total = sum(sum(row["seconds"].values()) for row in results)
    assert f"took {total / 3600:.2f} h of wall time in all" in text
    assert "Total run time of the script: 0 s. The grid is cached per (method, seed)" in text
    table = text.split("## Results")[1].split("## Claimed")[0]
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][
        1:
    ] == ["base", "random", "kmq-balanced"]
    assert (tmp_path / "results" / "quality_v1.png").exists()

    monkeypatch.setattr(
        sys, "argv", ["run.py", "--report-only", "--seeds", "0,1", "--results", "x", "--k", "4"]
    )
    assert grid_command().endswith("run.py --seeds 0,1 --k 4")
