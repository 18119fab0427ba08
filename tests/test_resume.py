"""kill -9 a real `kmq iterate` at several points; the resumed run ends byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_loop import write_pool

pytest.importorskip("trl")

KILL_AT = [  # a file whose appearance triggers the kill; each resumes the previous kill
    "round-01/DONE.select",
    "round-01/train",  # in the middle of round 1's training
    "round-02/DONE.generate",
    "round-03/DONE.score",
]


def command(pool: Path, run: Path, model: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kmq.cli",
        "iterate",
        str(pool),
        "--budget",
        "12",
        "--rounds",
        "3",
        "--k",
        "4",
        "--seed",
        "0",
        "--run",
        str(run),
        "--model",
        str(model),
        "--max-new-tokens",
        "8",
        "--train-batch-size",
        "4",
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]


def kill_when(args: list[str], marker: Path, timeout: float = 300.0) -> None:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"finished before {marker} appeared: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{marker} did not appear within {timeout} s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def outcome(run: Path) -> tuple[bytes, list[list[str]], list[list[float]]]:
    state = [json.loads((run / f"round-0{r}" / "picked.json").read_text()) for r in (1, 2, 3)]
    weights = [json.loads((run / f"round-0{r}" / "weights.json").read_text()) for r in (1, 2, 3)]
    return (
        (run / "final" / "selected.jsonl").read_bytes(),
        [s["ids"] for s in state],
        [w["after"] for w in weights],
    )


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_selection(tmp_path: Path, tiny_llama: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, n=48)
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    done = subprocess.run(
        command(pool, reference, tiny_llama, cache), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    first = command(pool, run, tiny_llama, cache)
    resume = [sys.executable, "-m", "kmq.cli", "iterate", "--resume", str(run)]
    for i, marker in enumerate(KILL_AT):
        kill_when(first if i == 0 else resume, run / marker)
    finished = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert outcome(run) == outcome(reference)
    assert not list(run.rglob("*.tmp"))  # no half-written file left behind
