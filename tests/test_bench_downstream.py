"""benchmarks/quality/downstream.py: every stage is cached and resumed, a wider run computes only
what is missing, and the report pairs each arm with random seed by seed.

Training and evaluation are replaced by counting fakes; selection is the real (fast) one on a
small synthetic pool.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path[:0] = [str(BENCH / "quality"), str(BENCH)]

import downstream  # noqa: E402
import selection  # noqa: E402

from kmq.examples import Example, Message  # noqa: E402

N = 120


def example(i: int, noisy: bool = False) -> Example:
    answer = f"answer {i}" if not noisy else f"{i} answer"
    return Example(
        id=f"r{i}",
        messages=(Message("user", f"question {i}"), Message("assistant", answer)),
        row=i,
        source=("a", "b", "c")[i % 3],
    )


def make_bench(tmp_path: Path) -> selection.Bench:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    is_noisy = np.arange(N) % 4 == 0
    sources = [("a", "b", "c")[i % 3] for i in range(N)]
    held = selection.holdout_rows(sources, 2, seed=0)
    args = argparse.Namespace(run=tmp_path / "selections", budget=12, k=3, holdout=2)
    quality = np.where(is_noisy, 0.1, 1.0)
    return selection.Bench(
        args=args,
        x=x,
        sources=sources,
        examples={
            "clean": [example(i) for i in range(N)],
            "noisy": [example(i, bool(is_noisy[i])) for i in range(N)],
        },
        noisy_path=tmp_path / "noisy.jsonl",
        is_noisy=is_noisy,
        noise_kinds=np.where(is_noisy, "shuffle", "").astype(object),
        noise_summary={"noisy": int(is_noisy.sum()), "rows": N, "specs": []},
        held=held,
        pool_rows=np.setdiff1d(np.arange(N), held),
        scores={("clean", "q"): np.ones(N), ("noisy", "q"): quality},
        quality_ids={("clean", "q"): "q", ("noisy", "q"): "q"},
    )


class Fake(downstream.Downstream):
    """Training writes an empty checkpoint; evaluation returns a made-up NLL that is lower the
    fewer noisy rows were trained on (so the report has something to find)."""

    calls: Counter[str]

    def train(self, rows: list[Example], folder: Path, seed: int) -> Path:
        self.calls["train"] += 1
        (folder / "checkpoint").mkdir(parents=True)
        noisy = sum(ex.messages[-1].content[0].isdigit() for ex in rows) / len(rows)
        (folder / "checkpoint" / "noisy.json").write_text(json.dumps(noisy + 0.001 * seed))
        return folder / "checkpoint"

    def evaluate(self, checkpoint: Path | None) -> dict[str, Any]:
        self.calls["evaluate"] += 1
        noisy = 0.0 if checkpoint is None else json.loads((checkpoint / "noisy.json").read_text())
        return {
            "suites": {"gsm8k": 1.0 + noisy, "alpacaeval": 2.0 + noisy},
            "holdout": {"a": 1.5 + noisy, "b": 1.0 + 2 * noisy},
            "items": {},
        }

    def measure_margin(self, checkpoint: Path | None) -> dict[str, Any]:
        self.calls["margin"] += 1
        noisy = 0.0 if checkpoint is None else json.loads((checkpoint / "noisy.json").read_text())
        kinds = {"shuffle": 1.0 - noisy, "swap": 2.0 - noisy, "truncate": 0.1 - noisy}
        return {
            "kinds": kinds,
            "n": dict.fromkeys(kinds, 3),
            downstream.MARGIN: float(np.mean(list(kinds.values()))),
            "clean": {"a": 1.5 + noisy, "b": 1.0 + 2 * noisy},
        }


def make_args(tmp_path: Path, **changes: Any) -> argparse.Namespace:
    parser_defaults = {
        "out": tmp_path / "out",
        "results": tmp_path / "results",
        "name": "quality",
        "records": [],
        "pool": Path("pool.jsonl"),
        "nll_table": None,
        "quality": "q",
        "budget": 12,
        "k": 3,
        "holdout": 2,
        "pools": "noisy",
        "arms": "random,kmq-balanced",
        "seeds": 3,
        "model": "tiny",
        "epochs": 1.0,
        "learning_rate": 2e-4,
        "lora_r": 4,
        "batch_size": 2,
        "train_max_length": 64,
        "precision": "float32",
        "suites": "gsm8k,alpacaeval",
        "eval_items": 5,
        "eval_max_length": 64,
        "eval_dtype": "float32",
        "eval_dir": tmp_path,
        "cache_dir": tmp_path / "cache",
        "margin_pools": "",
    }
    args = argparse.Namespace(**(parser_defaults | changes))
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def run(tmp_path: Path, bench: selection.Bench, **changes: Any) -> Fake:
    args = make_args(tmp_path, **changes)
    ds = Fake(args, bench, selection.make_arms(args.arms.split(","), ["q"]))
    ds.calls = Counter()
    ds.run()
    return ds


def test_a_rerun_computes_nothing_and_a_wider_run_only_what_is_new(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    first = run(tmp_path, bench)
    assert first.calls == Counter({"train": 6, "evaluate": 7})  # 3 seeds × 2 arms + the base
    assert run(tmp_path, bench).calls == Counter()
    wider = run(tmp_path, bench, seeds=4, pools="noisy,clean")
    assert wider.calls == Counter({"train": 10, "evaluate": 10})  # 16 cells, 6 done
    reevaluated = run(tmp_path, bench, seeds=4, pools="noisy,clean", eval_items=6)
    assert reevaluated.calls == Counter({"evaluate": 17})  # evaluation settings: no retraining
    retrained = run(tmp_path, bench, seeds=1, lora_r=8)
    assert retrained.calls == Counter({"train": 2, "evaluate": 2})


def test_an_interrupted_training_is_redone(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=1)
    job = ds.jobs()[1]
    (job.checkpoint / "DONE").unlink()
    job.eval_path.unlink()
    # a job cut short in training never reached the record either
    record = tmp_path / "results" / "quality_runs.jsonl"
    kept = [line for line in record.read_text().splitlines() if job.eval_key not in line]
    record.write_text("".join(f"{line}\n" for line in kept))
    assert run(tmp_path, bench, seeds=1).calls == Counter({"train": 1, "evaluate": 1})


def test_reading_the_results_of_a_wider_run_draws_no_selection(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    run(tmp_path, bench, seeds=2)
    args = make_args(tmp_path, seeds=4, pools="noisy,clean")
    wider = Fake(args, bench, selection.make_arms(args.arms.split(","), ["q"]))
    drawn = sorted(p.name for p in (tmp_path / "selections").rglob("s*-*.json"))
    rows = wider.results()
    assert sorted(p.name for p in (tmp_path / "selections").rglob("s*-*.json")) == drawn
    assert len(rows) == 1 + 2 * 2  # the base and the 2 seeds × 2 arms that ran
    assert len(wider.jobs(drawn_only=True)) == len(rows)
    assert len(wider.jobs()) == 1 + 4 * 2 * 2  # drawing every selection of the wider run


def test_jobs_go_seed_by_seed_and_reuse_selection_picks(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=2, pools="noisy,clean")
    names = [(j.seed, j.pool, j.arm.label if j.arm else None) for j in ds.jobs()]
    assert names[0] == (None, None, None)
    assert [n[0] for n in names[1:]] == [0, 0, 0, 0, 1, 1, 1, 1]
    arm = selection.make_arms(["kmq-balanced"], ["q"])[0]
    job = next(j for j in ds.jobs() if j.arm == arm and j.pool == "noisy" and j.seed == 1)
    picks, _ = selection.pick(bench, "noisy", arm, 1)
    assert job.picks is not None and np.array_equal(job.picks, picks)
    assert not set(job.picks.tolist()) & set(bench.held.tolist())


def test_report_pairs_every_arm_with_random(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=3)
    rows = ds.results()
    assert {r["arm"] for r in rows} == {"base", "random", "kmq-balanced"}
    d = downstream.paired(rows, "noisy", "kmq-balanced", "random", "held-out NLL")
    assert len(d) == 3
    by = {(r["arm"], r["seed"]): downstream.metrics(r)["held-out NLL"] for r in rows}
    assert d[1] == pytest.approx(by["kmq-balanced", 1] - by["random", 1])
    assert (d < 0).all()  # the fake quality avoids the noisy rows, so lower NLL
    downstream.report(ds, 1.0)
    text = (tmp_path / "results" / "quality.md").read_text(encoding="utf-8")
    assert "| noisy | kmq-balanced − random | held-out NLL | 3 |" in text
    assert "base (no fine-tuning)" in text
    assert "Pool: the planted-noise twin of `pool.jsonl` (30 of 120 rows noisy)" in text
    assert "the last rows" not in text  # no clean pool, no noise cost
    assert (tmp_path / "results" / "quality.png").is_file()


def test_noise_cost_pairs_random_on_the_two_pools_row_for_row(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=2, pools="noisy,clean", arms="random")
    jobs = {(j.pool, j.seed): j for j in ds.jobs() if j.arm is not None}
    for seed in (0, 1):  # random ignores the answers: the same rows from both pools
        noisy, clean = jobs["noisy", seed].picks, jobs["clean", seed].picks
        assert noisy is not None and clean is not None and np.array_equal(noisy, clean)
    cost = downstream.noise_cost(ds.results(), "external NLL")
    assert len(cost) == 2 and (cost > 0).all()  # the fake model pays for every noisy row
    downstream.report(ds, 1.0)
    text = (tmp_path / "results" / "quality.md").read_text(encoding="utf-8")
    assert "| both | random: noisy − clean pool | external NLL | 2 |" in text
    assert text.count("Pools: `pool.jsonl` and its planted-noise twin (30 of 120 rows noisy)") == 1
    assert "the last rows (`random: noisy − clean pool`" in text


def test_power_section_pools_the_arm_comparisons_only() -> None:
    from stats import detectable_difference, paired_test

    a = paired_test([0.01, 0.02, 0.03])  # sd 0.01
    b = paired_test([0.0, 0.02, 0.04, 0.06])  # sd ≈ 0.0258
    noise = paired_test([0.5, -0.5])  # the noise-cost row: not an arm − random comparison
    comparisons = [
        ("noisy", "kmq-balanced − random", "held-out NLL", a),
        ("noisy", "km-random-balanced − random", "held-out NLL", b),
        ("both", "random: noisy − clean pool", "held-out NLL", noise),
    ]
    text = downstream.power_section(comparisons, family_size=3)
    pooled = np.sqrt((2 * a.std**2 + 3 * b.std**2) / 5)
    row = next(line for line in text.splitlines() if line.startswith("| held-out NLL"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{pooled:.4f}" and cells[2] == "5"
    five = cells[2 + downstream.POWER_SEEDS.index(5) + 1]
    alone = detectable_difference(pooled, 5)
    holm_first = detectable_difference(pooled, 5, alpha=0.05 / 3)
    assert five == f"{alone:.4f} / {holm_first:.4f}"
    assert "external NLL" not in text  # no comparison on it: no row


def test_exploratory_metric_leaves_truthfulqa_out_and_has_its_own_holm_family() -> None:
    row = {"suites": {"gsm8k": 1.0, "truthfulqa": 3.0, "humaneval": 2.0}, "holdout": {"a": 1.0}}
    got = downstream.metrics(row)
    assert got["external NLL"] == pytest.approx(2.0)
    assert got[downstream.EXPLORATORY] == pytest.approx(1.5)
    assert downstream.EXPLORATORY not in downstream.metrics({**row, "suites": {"gsm8k": 1.0}})

    def result(arm: str, seed: int, gsm8k: float) -> dict[str, Any]:
        suites = {"gsm8k": gsm8k, "truthfulqa": 3.0}
        return {"pool": "noisy", "arm": arm, "seed": seed, "suites": suites, "holdout": {"a": 1.0}}

    results = [result("random", s, 1.0 + 0.01 * s) for s in range(3)]
    results += [result("kmq", s, 0.9 + 0.01 * s + 0.001 * s * s) for s in range(3)]
    comparisons = downstream.family(results, ["noisy"], ["random", "kmq"], [downstream.EXPLORATORY])
    assert [(c[1], c[2]) for c in comparisons] == [("kmq − random", downstream.EXPLORATORY)]
    assert comparisons[0][3].mean == pytest.approx(-0.1 + 0.005 / 3)
    table, tested = downstream.family_table(comparisons)
    assert tested == 1 and "kmq − random" in table


def test_confirmation_tests_only_the_declared_fresh_seeds() -> None:
    pool, arm, metric, first = downstream.CONFIRMATION
    assert metric == downstream.EXPLORATORY

    def result(name: str, seed: int, gsm8k: float) -> dict[str, Any]:
        suites = {"gsm8k": gsm8k, "truthfulqa": 9.0}
        return {"pool": pool, "arm": name, "seed": seed, "suites": suites, "holdout": {"a": 1.0}}

    # the old seeds favour the arm by a lot; the fresh ones by -0.02, -0.03, -0.04
    results = [result("random", s, 1.0) for s in range(first + 3)]
    results += [result(arm, s, 0.5) for s in range(first)]
    assert "Not run yet: 0 fresh seed(s)" in downstream.confirmation(results)
    results += [result(arm, first + i, 1.0 - 0.01 * (i + 2)) for i in range(3)]
    text = downstream.confirmation(results)
    row = next(line for line in text.splitlines() if line.startswith("| 3 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "-0.0300"  # the mean of the fresh seeds only
    half = 4.302653 * 0.01 / np.sqrt(3)  # exact t(0.975, 2) × sd / √n
    assert cells[2] == f"[{-0.03 - half:+.4f}, {-0.03 + half:+.4f}]"
    assert cells[5] == "confirmed"  # t = -5.2 with 2 df: p = 0.035
    results[-1] = result(arm, first + 2, 1.0 + 0.05)  # fresh diffs -0.02, -0.03, +0.05
    assert "| not confirmed |" in downstream.confirmation(results)


def test_the_replication_family_uses_the_frozen_components_and_holm_over_four() -> None:
    arm = downstream.REPLICATION[0][1]
    other = downstream.REPLICATION[1][1]
    suites = ("gsm8k", "mt-bench", "alpacaeval", "truthfulqa", "humaneval")
    sources = ("alpaca-gpt4", "codealpaca", "gpteacher-codegen", "gsm8k", "lima", "t0")

    def result(name: str, seed: int, shift: float, t0: float) -> dict[str, Any]:
        return {
            "pool": "noisy",
            "arm": name,
            "seed": seed,
            "suites": {s: 1.0 + shift for s in suites},
            "holdout": {s: (t0 if s == "t0" else 1.0 + shift) for s in sources},
        }

    row = result("random", 0, 0.0, 9.0)
    got = downstream.metrics(row)
    assert got[downstream.REPLICATED] == pytest.approx(1.0)  # held-out t0 is not a component
    assert downstream.replication_section([row]) == ""  # nothing paired yet
    del row["holdout"]["lima"]
    assert downstream.REPLICATED not in downstream.metrics(row)

    # the arm is better by 0.01, 0.02, 0.03 on every component; held-out t0 far worse
    results = [result("random", s, 0.0, 4.0) for s in range(3)]
    results += [result(arm, s, -0.01 * (s + 1), 5.0) for s in range(3)]
    text = downstream.replication_section(results)
    lines = [line for line in text.splitlines() if line.startswith(f"| `{arm}`")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [c[1] for c in cells] == [downstream.REPLICATED, downstream.EXPLORATORY]
    half = 4.302653 * 0.01 / np.sqrt(3)  # exact t(0.975, 2) × sd / √n
    assert cells[0][3] == "-0.0200"
    assert cells[0][4] == f"[{-0.02 - half:+.4f}, {-0.02 + half:+.4f}]"
    # t = -3.464 on 2 df: p = 0.0742; Holm's first step over four tests (two not run: p = 1)
    assert cells[0][6] == "0.074" and cells[0][7] == "0.3"
    assert cells[0][8] == "not replicated (within noise)"
    assert sum("not run yet" in line for line in text.splitlines()) == 2
    assert f"`{other}`" in text
    # a tight effect survives Holm over the four: -0.020, -0.021, -0.022 (t = -34.6, p = 0.0008)
    results = [result("random", s, 0.0, 4.0) for s in range(3)]
    results += [result(arm, s, -0.02 - 0.001 * s, 4.0) for s in range(3)]
    verdicts = [
        line.rsplit("|", 2)[1].strip()
        for line in downstream.replication_section(results).splitlines()
        if f"`{arm}`" in line
    ]
    assert verdicts == ["**replicated**", "**replicated**"]


def test_the_report_says_how_the_iterative_arm_picked() -> None:
    from types import SimpleNamespace

    one_shot = SimpleNamespace(arms=selection.make_arms(["random", "kmq-balanced"], ["q"]))
    assert downstream.iterative_note(one_shot) == ""  # type: ignore[arg-type]
    iterative = ["iterative-kmq-std", "iterative-kmq-sound", "iterative-kmq-sound-prop"]
    arms = selection.make_arms(["random", *iterative], ["q"])
    note = downstream.iterative_note(SimpleNamespace(arms=arms))  # type: ignore[arg-type]
    assert "3 rounds" in note
    assert "`gold-fit` from round-1 weights 1/k for `iterative-kmq-std`" in note
    assert "`gold-sound` from round-1 weights 1/k for `iterative-kmq-sound`" in note
    assert "`gold-sound` from round-1 weights ∝ cluster size for `iterative-kmq-sound-prop`" in note
    assert "`standardized`" in note and "--no-train" in note


def test_the_validated_metric_keeps_what_the_noise_hurts_for_random_only() -> None:
    pool, arm, metric = downstream.DECLARED_VALIDATED[0]

    def result(name: str, where: str, seed: int, gsm8k: float, tqa: float) -> dict[str, Any]:
        suites = {"gsm8k": gsm8k, "truthfulqa": tqa}
        return {"pool": where, "arm": name, "seed": seed, "suites": suites, "holdout": {"a": 1.0}}

    results = []
    for s in range(3):
        results.append(result("random", "clean", s, 1.0, 3.0))
        # the noise raises gsm8k (+0.02) and lowers truthfulqa (-0.2) and leaves held-out alone
        results.append(result("random", "noisy", s, 1.02 + 0.001 * s, 2.8))
        # the arm is worse on truthfulqa and better on gsm8k: only gsm8k counts
        results.append(result(arm, pool, s, 1.0 - 0.002 * s, 3.5))
    assert downstream.noise_hurts(results) == [("gsm8k", pytest.approx(0.021))]
    hurts = downstream.noise_hurts(results)
    rows = downstream.with_validated(results, hurts)
    assert all(downstream.metrics(r)[metric] == r["suites"]["gsm8k"] for r in rows)
    text = downstream.validated_section(rows, hurts, ["noisy", "clean"], ["random", arm])
    assert "gsm8k (+0.0210)" in text and "truthfulqa (" not in text.split("Chosen")[0]
    assert "3 seeds: -0.0230" in text and "**better than random**" in text
    d = downstream.paired(rows, pool, arm, "random", metric)
    assert d == pytest.approx([-0.02, -0.023, -0.026])
    noisy = [r for r in results if r["pool"] == "noisy"]
    assert downstream.with_validated(noisy, downstream.noise_hurts(noisy)) == [
        r for r in results if r["pool"] == "noisy"
    ]  # no clean pool: nothing to validate with, rows unchanged


def test_the_paper_ordering_is_one_holm_family_on_the_clean_pool_only() -> None:
    def result(arm: str, seed: int, nll: float, pool: str = "clean") -> dict[str, Any]:
        suites = {"gsm8k": nll}
        return {"pool": pool, "arm": arm, "seed": seed, "suites": suites, "holdout": {"a": nll}}

    base = [1.0, 1.1, 0.9, 1.05]
    results = [result("random", s, v) for s, v in enumerate(base)]
    # deita beats random by 0.1 ± a little; qdit loses by exactly 0.05 every seed (zero spread)
    results += [result("deita", s, v - 0.1 + 0.002 * s) for s, v in enumerate(base)]
    results += [result("qdit", s, v + 0.05) for s, v in enumerate(base)]
    results += [result("deita", s, 9.0, pool="noisy") for s in range(4)]  # other pool: ignored
    assert downstream.ordering_section(results, ["random", "kmq-balanced-std"]) == ""
    text = downstream.ordering_section(results, ["random", "deita", "qdit"])
    rows = [line for line in text.splitlines() if line.startswith(("| deita", "| qdit"))]
    cells = {
        (c[0], c[1]): c
        for c in ([x.strip() for x in r.strip("|").split("|")] for r in rows)
        if c[0] != "claim"
    }
    assert set(cells) == {
        ("deita beats random", "held-out NLL"),
        ("deita beats random", "external NLL"),
        ("qdit beats random", "held-out NLL"),
        ("qdit beats random", "external NLL"),
    }
    deita = cells["deita beats random", "held-out NLL"]
    assert deita[2] == "4" and deita[3] == f"{-0.1 + 0.003:+.4f}"
    # t ≈ -75 with 3 df, p ≈ 5e-6: Holm over the whole declared family (20 tests, the 16 not
    # run counted as p = 1) multiplies it by 20, not by the 2 tests that ran
    t = downstream.paired_test(
        downstream.paired(results, "clean", "deita", "random", "held-out NLL")
    )
    assert deita[6] == f"{min(1.0, 20 * t.p):.2g}" and deita[7] == "confirmed"
    qdit = cells["qdit beats random", "external NLL"]
    assert qdit[6] == "n/a" and qdit[7] == "n/a (zero spread)"
    assert "Holm over the declared family of 20 tests" in text
    not_run = text.split("Not run yet (p = 1 in the correction): ")[1].split(".\n")[0]
    assert "kmq-balanced-std beats random (held-out NLL)" in not_run
    assert "deita beats random" not in not_run and not_run.count("(") == 16
    worse = [result("qdit", s, v + 0.05 + 0.001 * s) for s, v in enumerate(base)]
    text = downstream.ordering_section([*results[:4], *worse], ["random", "qdit"])
    assert "| qdit beats random | held-out NLL |" in text
    assert "refuted" in text.split("| qdit beats random | held-out NLL |")[1].splitlines()[0]


def test_the_paper_ordering_has_an_exploratory_table_without_truthfulqa() -> None:
    def result(arm: str, seed: int, gsm8k: float, tqa: float) -> dict[str, Any]:
        suites = {"gsm8k": gsm8k, "truthfulqa": tqa}
        return {"pool": "clean", "arm": arm, "seed": seed, "suites": suites, "holdout": {"a": 1.0}}

    results = [result("random", s, 1.0 + 0.01 * s, 2.0) for s in range(3)]
    # deita: better on gsm8k by 0.05 (± a little), much worse on TruthfulQA
    results += [result("deita", s, 0.95 + 0.011 * s, 2.5) for s in range(3)]
    text = downstream.ordering_section(results, ["random", "deita"])
    declared, explored = text.split("without TruthfulQA (exploratory")
    assert "| deita beats random | external NLL | 3 | +0.2255 |" in declared
    assert f"| deita beats random | {downstream.EXPLORATORY} | 3 | -0.0490 |" in explored
    assert "Holm over its own 10 tests" in explored


def test_the_record_carries_finished_jobs_to_a_fresh_machine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--out`` is scratch; the committed ``<results>/<name>_runs.jsonl`` is not: a run whose
    ``--out`` and selection cache are gone trains nothing the record holds, and its report is
    the same."""
    bench = make_bench(tmp_path)
    first = run(tmp_path, bench, seeds=2)
    record = tmp_path / "results" / "quality_runs.jsonl"
    assert len(record.read_text().splitlines()) == 5  # the base and 2 seeds × 2 arms
    before = sorted(json.dumps(r, sort_keys=True) for r in first.results())
    fresh = tmp_path / "fresh"
    bench.args.run = fresh / "selections"  # the picks' cache is gone too: drawn again
    again = run(fresh, bench, seeds=2, results=tmp_path / "results")
    assert again.calls == Counter()
    assert sorted(json.dumps(r, sort_keys=True) for r in again.results()) == before
    # a wider run on the fresh machine trains only the seed the record lacks
    wider = run(fresh, bench, seeds=3, results=tmp_path / "results")
    assert wider.calls == Counter({"train": 2, "evaluate": 2})
    assert len(record.read_text().splitlines()) == 7


def test_other_records_are_read_and_only_the_own_one_is_written(tmp_path: Path) -> None:
    """A run of both pools takes a clean-pool run's jobs from that run's record (``--records``)
    and appends only its new jobs, to its own record."""
    bench = make_bench(tmp_path)
    run(tmp_path, bench, seeds=2, pools="clean", name="clean_only")
    clean_record = tmp_path / "results" / "clean_only_runs.jsonl"
    before = clean_record.read_text()
    fresh = tmp_path / "fresh"
    bench.args.run = fresh / "selections"
    both = run(fresh, bench, seeds=2, pools="noisy,clean", records=["clean_only"],
               results=tmp_path / "results")  # fmt: skip
    assert both.calls == Counter({"train": 4, "evaluate": 4})  # the noisy pool's 2 × 2 only
    assert clean_record.read_text() == before
    own = downstream.read_record(tmp_path / "results" / "quality_runs.jsonl").values()
    assert sorted((r["pool"], r["seed"]) for r in own) == [("noisy", 0)] * 2 + [("noisy", 1)] * 2
    assert {(r["pool"], r["arm"], r["seed"]) for r in both.results() if r["arm"] != "base"} == {
        (pool, arm, seed)
        for pool in ("noisy", "clean")
        for arm in ("random", "kmq-balanced")
        for seed in (0, 1)
    }


def test_a_record_line_cut_short_is_reported_and_its_job_run_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bench = make_bench(tmp_path)
    run(tmp_path, bench, seeds=1)
    record = tmp_path / "results" / "quality_runs.jsonl"
    lines = record.read_text().splitlines()
    record.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # a crash mid-write
    bench.args.run = tmp_path / "fresh" / "selections"
    with caplog.at_level("WARNING", logger="kmq.benchmarks"):
        again = run(tmp_path / "fresh", bench, seeds=1, results=tmp_path / "results")
    assert f"{record}:3: not a job row, skipped (not JSON" in caplog.text
    assert again.calls == Counter({"train": 1, "evaluate": 1})
    rows = downstream.read_record(record)
    assert len(rows) == 3 and record.read_text().count("\n") == 4  # the cut line kept, ended


def test_a_clean_pool_run_reports_the_ordering_claims_it_has_and_lists_the_rest(
    tmp_path: Path,
) -> None:
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=3, pools="clean", arms="random,km-random-balanced")
    downstream.report(ds, 1.0)
    text = (tmp_path / "results" / "quality.md").read_text(encoding="utf-8")
    assert "no arm reads a quality score" in text
    assert "| km-random-balanced beats random | held-out NLL | 3 |" in text
    assert "Not run yet (p = 1 in the correction): kmq-balanced-std beats random" in text
    assert "Confirmation of the exploratory lead" not in text  # its pool did not run
    assert "Pool: `pool.jsonl` (the clean pool of `selection.py`; its planted-noise twin" in text
    assert "Pools:" not in text and "the last rows" not in text  # no noisy pool, no noise cost


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"suites": {"gsm8k": "1.0"}}, "field suites"),
        ({"holdout": None}, "field holdout"),
        ({"eval_key": 3}, "field eval_key"),
        ({"seed": None}, "fields pool/seed"),
        ({"picks": [1, "2"], "selection_key": "s"}, "fields picks/selection_key"),
        ({"picks": [1, 2]}, "fields picks/selection_key"),
    ],
)
def test_a_record_row_with_a_bad_field_is_named_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict[str, Any], field: str
) -> None:
    good = {"eval_key": "k", "pool": "clean", "arm": "random", "seed": 0}
    good |= {"suites": {"gsm8k": 1.0}, "holdout": {"a": 1.0}}
    record = tmp_path / "quality_runs.jsonl"
    record.write_text(json.dumps(good) + "\n" + json.dumps(good | change) + "\n")
    with caplog.at_level("WARNING", logger="kmq.benchmarks"):
        rows = downstream.read_record(record)
    assert f"{record}:2: not a job row, skipped ({field}" in caplog.text
    assert rows == {"k": good}


def test_a_machine_whose_embeddings_differ_reuses_the_recorded_picks(tmp_path: Path) -> None:
    """Two CPUs embed the pool a float rounding apart, enough to move some seeds' k-means and
    so their picks: the record keeps each job's picks, and a run on the other machine trains
    none of the recorded jobs again; its own draws are cached apart from the first machine's."""
    bench = make_bench(tmp_path)
    first = run(tmp_path, bench, seeds=2)
    before = sorted(json.dumps(r, sort_keys=True) for r in first.results())
    rows = downstream.read_record(tmp_path / "results" / "quality_runs.jsonl").values()
    assert all(len(r["picks"]) == 12 for r in rows if r["arm"] != "base")
    assert "picks" not in next(iter(first.results()))  # the scores in --out carry no picks

    other = make_bench(tmp_path)
    other.x = other.x + np.random.default_rng(1).normal(scale=0.2, size=other.x.shape)
    other.args = argparse.Namespace(**vars(bench.args) | {"run": tmp_path / "other" / "sel"})
    kmq = selection.make_arms(["kmq-balanced"], ["q"])[0]
    own = [selection.pick(other, "noisy", kmq, s)[0] for s in range(2)]
    recorded = [j.picks for j in first.jobs() if j.arm == kmq]
    assert any(not np.array_equal(a, b) for a, b in zip(own, recorded, strict=True))
    assert selection.pick_path(other, "noisy", kmq, 0).name != (
        selection.pick_path(bench, "noisy", kmq, 0).name
    )
    again = run(tmp_path / "other", other, seeds=2, results=tmp_path / "results")
    assert again.calls == Counter()
    assert sorted(json.dumps(r, sort_keys=True) for r in again.results()) == before
    # another budget is another selection: the recorded picks do not stand in for it
    other.args.budget = 10
    assert run(tmp_path / "other", other, seeds=1, results=tmp_path / "results").calls == Counter(
        {"train": 2, "evaluate": 2}
    )


def test_margins_are_measured_once_per_job_of_their_pools_and_kept_by_the_record(
    tmp_path: Path,
) -> None:
    bench = make_bench(tmp_path)
    first = run(tmp_path, bench, seeds=2, pools="noisy,clean", margin_pools="noisy")
    assert first.calls == Counter({"train": 8, "evaluate": 9, "margin": 5})  # base + 2 × 2 noisy
    rows = first.margin_rows()
    assert sorted((r["pool"], r["arm"], r["seed"]) for r in rows if r["arm"] != "base") == [
        ("noisy", arm, seed) for arm in ("kmq-balanced", "random") for seed in (0, 1)
    ]
    assert all(r["replay"] == 0.0 and not r["retrained"] for r in rows)
    assert run(tmp_path, bench, seeds=2, pools="noisy,clean", margin_pools="noisy").calls == (
        Counter()
    )
    fresh = tmp_path / "fresh"
    bench.args.run = fresh / "selections"
    again = run(fresh, bench, seeds=2, pools="noisy,clean", margin_pools="noisy",
                results=tmp_path / "results")  # fmt: skip
    assert again.calls == Counter()  # the margin record, like the job record, is carried
    same = [json.dumps(r, sort_keys=True) for r in rows]
    assert sorted(json.dumps(r, sort_keys=True) for r in again.margin_rows()) == sorted(same)


def test_a_margin_whose_checkpoint_is_gone_trains_it_again(tmp_path: Path) -> None:
    """``--margins-only`` adds the margins to finished jobs: from the checkpoint where there is
    one, else trained again from the same picks; it starts no job."""
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=2)
    assert ds.calls["margin"] == 0 and not ds.margin_rows()
    gone = ds.jobs()[3]
    shutil.rmtree(gone.checkpoint.parent)
    args = make_args(tmp_path, seeds=3, margin_pools="noisy")  # seed 2 not run: no margin
    again = Fake(args, bench, selection.make_arms(args.arms.split(","), ["q"]))
    again.calls = Counter()
    again.margins()
    assert again.calls == Counter({"train": 1, "margin": 5})
    rows = {(r["arm"], r["seed"]): r for r in again.margin_rows()}
    assert len(rows) == 5 and (2 not in {seed for _, seed in rows})
    assert rows[gone.arm.label, gone.seed]["retrained"]  # type: ignore[union-attr]
    assert sum(r["retrained"] for r in rows.values()) == 1


def margin_row(arm: str, seed: int, value: float, share: float = 0.3) -> dict[str, Any]:
    kinds = {"shuffle": value, "swap": value + 1.0, "truncate": value - 1.0}
    return {"pool": "noisy", "arm": arm, "seed": seed, "noisy share": share, "kinds": kinds,
            downstream.MARGIN: value, "replay": 0.0, "retrained": False}  # fmt: skip


def test_the_margin_family_is_judged_over_its_four_with_higher_as_better() -> None:
    arm = downstream.MARGIN_FAMILY[0][1]
    rows = [margin_row("random", s, 0.5, 0.3) for s in range(3)]
    rows += [margin_row(arm, s, 0.52 + 0.001 * s, 0.15) for s in range(3)]
    labels = ["random", arm]
    text = downstream.margin_section(rows, labels)
    line = next(x for x in text.splitlines() if x.startswith(f"| `{arm}` − `random`"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    half = 4.302653 * 0.001 / np.sqrt(3)  # exact t(0.975, 2) × sd / √n
    assert cells[1:4] == ["3", "+0.0210", f"[{0.021 - half:+.4f}, {0.021 + half:+.4f}]"]
    # t = 36.37 on 2 df: p = 0.000755; Holm over the four declared (three not run: p = 1)
    assert cells[5] == "0.00076" and cells[6] == "0.003"
    assert cells[7] == "**higher than random**"
    assert text.count("| not run yet |") == 3
    # every margin and kind, arm − random; and the margin against the noisy share
    assert f"| noisy | {arm} − random | margin: swap | 3 | +0.0210 |" in text
    assert "| noise margin | 6 | -1.00 |" in text
    # the margin's power table: sd of the paired differences (0.001) on 2 df
    assert "How many seeds the margin needs" in text and "| noise margin | 0.0010 | 2 |" in text
    lower = [margin_row("random", s, 0.5) for s in range(3)]
    lower += [margin_row(arm, s, 0.48 - 0.001 * s) for s in range(3)]
    assert "**lower than random**" in downstream.margin_section(lower, labels)
    assert downstream.margin_section([margin_row("random", 0, 0.5)][:0], labels) == ""


def test_the_report_shows_the_margins(tmp_path: Path) -> None:
    bench = make_bench(tmp_path)
    ds = run(tmp_path, bench, seeds=3, margin_pools="noisy")
    downstream.report(ds, 1.0)
    text = (tmp_path / "results" / "quality.md").read_text(encoding="utf-8")
    assert "The noise margin (declared)" in text
    assert "| noisy | kmq-balanced | 3 |" in text and "base (no fine-tuning) | 1 |" in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"margin_key": None}, "field margin_key"),
        ({downstream.MARGIN: "0.1"}, f"field {downstream.MARGIN}"),
        ({"kinds": {"swap": True}}, "field kinds"),
        ({"seed": None}, "fields pool/seed"),
    ],
)
def test_a_margin_row_with_a_bad_field_is_named_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict[str, Any], field: str
) -> None:
    good = margin_row("random", 0, 0.5) | {"margin_key": "m"}
    record = tmp_path / "quality_margins.jsonl"
    record.write_text(json.dumps(good) + "\n" + json.dumps(good | change) + "\n")
    with caplog.at_level("WARNING", logger="kmq.benchmarks"):
        rows = downstream.read_record(record, "margin_key", downstream.margin_problem, "margin")
    assert f"{record}:2: not a margin row, skipped ({field}" in caplog.text
    assert rows == {"m": good}


def test_a_margin_in_out_but_not_in_the_record_is_recorded_not_measured_again(
    tmp_path: Path,
) -> None:
    bench = make_bench(tmp_path)
    first = run(tmp_path, bench, seeds=1, margin_pools="noisy")
    assert first.calls["margin"] == 3  # the base and 2 arms
    record = tmp_path / "results" / "quality_margins.jsonl"
    before = downstream.read_record(record, "margin_key", downstream.margin_problem)
    record.unlink()
    again = run(tmp_path, bench, seeds=1, margin_pools="noisy")
    assert again.calls == Counter()
    assert downstream.read_record(record, "margin_key", downstream.margin_problem) == before


def test_the_headline_gives_random_and_every_arm_minus_random_with_its_interval() -> None:
    def result(arm: str, seed: int, nll: float, share: float) -> dict[str, Any]:
        return {"pool": "noisy", "arm": arm, "seed": seed, "noisy share": share,
                "suites": {"gsm8k": nll}, "holdout": {"a": nll + 1.0},
                "derived": {downstream.VALIDATED: nll}}  # fmt: skip

    results = [result("random", s, 1.0 + 0.01 * s, 0.3) for s in range(3)]
    results += [result("kmq", s, 0.98 + 0.011 * s, 0.1) for s in range(3)]
    results += [result("deita", 0, 0.9, 0.0), result("random", 0, 1.0, 0.3) | {"pool": "clean"}]
    margins = [margin_row("random", s, 0.5) for s in range(3)]
    margins += [margin_row("kmq", s, 0.6 + 0.001 * s) for s in range(3)]
    text = downstream.headline_section(results, margins, ["random", "kmq", "deita", "qdit"])
    assert "| arm | seeds | noisy share | noise margin ↑ | NLL where the noise hurts ↓ |" in text
    assert "| random (its mean) | 3 | 0.300 | 0.5000 | 1.0100 | 2.0100 | 1.0100 |" in text
    # kmq − random per seed: -0.02, -0.019, -0.018 (sd 0.001); margin +0.1, +0.101, +0.102
    half = 4.302653 * 0.001 / np.sqrt(3)  # exact t(0.975, 2) × sd / √n
    nll = f"-0.0190 [{-0.019 - half:+.4f}, {-0.019 + half:+.4f}]"
    margin = f"+0.1010 [{0.101 - half:+.4f}, {0.101 + half:+.4f}]"
    assert f"| kmq − random | 3 | 0.100 | {margin} | {nll} | {nll} | {nll} |" in text
    # one seed: the value alone; an arm without a margin: an empty cell; qdit: no row
    assert "| deita − random | 1 | 0.000 |  | -0.1000 (one seed) |" in text
    assert "qdit" not in text
    assert downstream.headline_section(results[3:6], margins, ["kmq"]) == ""  # no random
    assert downstream.interval_cell(np.array([0.1, 0.1])) == "+0.1000 [n/a]"  # zero spread
