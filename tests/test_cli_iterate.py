from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_loop import write_pool


def kmq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmq.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_external_trainer_mode_end_to_end(tmp_path: Path) -> None:
    """init → (their training) → feedback → next → ... → final, through the CLI, MiniLM encoder."""
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, n=60)
    run = tmp_path / "run"
    common = ["--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    init = kmq(
        "iterate",
        "init",
        str(pool),
        "--budget",
        "12",
        "--rounds",
        "2",
        "--k",
        "4",
        "--seed",
        "1",
        "--run",
        str(run),
        *common,
    )
    assert init.returncode == 0, init.stderr
    first = (run / "round-01" / "selected.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in first]
    assert len(rows) == 6
    scores = tmp_path / "scores.jsonl"
    scores.write_text(
        "".join(json.dumps({"id": r["id"], "score": i % 3}) + "\n" for i, r in enumerate(rows))
    )
    assert (
        kmq("iterate", "feedback", "1", "--run", str(run), "--scores", str(scores)).returncode == 0
    )
    nxt = kmq("iterate", "next", "--run", str(run))
    assert nxt.returncode == 0, nxt.stderr
    second = [
        json.loads(line) for line in (run / "round-02" / "selected.jsonl").read_text().splitlines()
    ]
    assert len(second) == 6 and not {r["id"] for r in second} & {r["id"] for r in rows}
    generations = tmp_path / "gen.jsonl"
    generations.write_text(
        "".join(json.dumps({"id": r["id"], "generation": "I do not know"}) + "\n" for r in second)
    )
    fb = kmq("iterate", "feedback", "2", "--run", str(run), "--generations", str(generations))
    assert fb.returncode == 0, fb.stderr
    done = kmq("iterate", "next", "--run", str(run))
    assert done.returncode == 0, done.stderr
    assert "all rounds done" in done.stdout
    final = (run / "final" / "selected.jsonl").read_text().splitlines()
    assert len(final) == 12
    state = json.loads(kmq("inspect", str(run), "--json").stdout)
    assert [len(r["picked_ids"]) for r in state["rounds"]] == [6, 6]
    assert all(sum(r["weights_after"]) == pytest.approx(1.0) for r in state["rounds"])
    assert state["rounds"][1]["weights_before"] == state["rounds"][0]["weights_after"]
    assert state["finished"]
    bad = kmq("iterate", "feedback", "1", "--run", str(run), "--scores", str(scores))
    assert bad.returncode == 2 and "already has its feedback" in bad.stderr


def test_no_train_with_a_generation_feedback_names_the_flag(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, n=30)
    run = tmp_path / "run"
    out = kmq(
        "iterate", str(pool), "--budget", "6", "--k", "3", "--run", str(run), "--no-progress",
        "--feedback", "similarity", "--no-train",
    )  # fmt: skip
    assert out.returncode == 2
    assert "error: --no-train applies only to feedback that reads no generation" in out.stderr
    assert "similarity scores the trained model's answers" in out.stderr
    assert not run.exists()
