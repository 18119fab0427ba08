"""A stop at any write of the external-trainer verbs (init / feedback / next) leaves a run that
rerunning the stopped verb continues to the same bytes as an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kmq.errors import KmqError
from kmq.loop import IterateConfig, IterativeSelection
from tests.test_loop import make_config, write_pool

ROUNDS = 3
ROUND_FILES = (
    "selected.jsonl",
    "picked.json",
    "DONE.select",
    "feedback.jsonl",
    "DONE.score",
    "weights.json",
    "DONE.reweight",
)
WRITES = [
    "config.json",
    "clusters.npz",
    "prepare.json",
    "DONE.prepare",
    *[f"round-{r:02d}/{name}" for r in range(1, ROUNDS + 1) for name in ROUND_FILES],
    "final/selected.jsonl",
    "final/selection.parquet",
    "state.json",
    "DONE.final",
]


class Killed(BaseException):
    """Stands for a kill: no ``except Exception`` handler of kmq sees it."""


def score_of(row_id: str) -> float:
    return int(hashlib.md5(row_id.encode()).hexdigest(), 16) % 1000 / 100.0


def verbs(run: Path, config: IterateConfig) -> list[Callable[[], object]]:
    """What a user types, in order: init, then feedback r and next for every round."""

    def init() -> object:
        return IterativeSelection(run, config).start_external()

    def feedback(r: int) -> Callable[[], object]:
        def call() -> object:
            loop = IterativeSelection(run, config)
            ids = loop.dir.read("picked.json", r)["ids"]
            loop.take_scores(r, {i: score_of(i) for i in ids})
            return None

        return call

    def advance() -> object:
        return IterativeSelection(run, config).advance()

    out: list[Callable[[], object]] = [init]
    for r in range(1, ROUNDS + 1):
        out += [feedback(r), advance]
    return out


@contextmanager
def stop_at(monkeypatch: pytest.MonkeyPatch, run: Path, target: str, when: str) -> Iterator[None]:
    """Raise :class:`Killed` once, just before or just after ``run/target`` is renamed in."""
    real = os.replace
    fired = False

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal fired
        hit = not fired and Path(dst) == run / target
        if hit and when == "before":
            fired = True
            raise Killed(target)
        real(src, dst)
        if hit:
            fired = True
            raise Killed(target)

    monkeypatch.setattr(os, "replace", replace)
    yield
    monkeypatch.setattr(os, "replace", real)
    assert fired, f"{target} was never written"


FINISHED = ("already has its feedback", "has no feedback yet")


def drive(run: Path, config: IterateConfig) -> None:
    """Every verb in turn; a verb that was stopped is run again, as a user would, who moves on
    when the rerun says the stopped call had finished its work."""
    for verb in verbs(run, config):
        try:
            verb()
        except Killed:
            try:
                verb()
            except KmqError as exc:
                if not any(message in str(exc) for message in FINISHED):
                    raise


def outcome(run: Path) -> dict[str, bytes]:
    names = ["final/selected.jsonl", "final/selection.parquet", "clusters.npz"]
    names += [
        f"round-{r:02d}/{name}"
        for r in range(1, ROUNDS + 1)
        for name in ("selected.jsonl", "picked.json", "feedback.jsonl", "weights.json")
    ]
    return {name: (run / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("reference")
    pool = tmp / "pool.jsonl"
    write_pool(pool)
    drive(tmp / "run", make_config(tmp, pool, external=True))
    return tmp, outcome(tmp / "run")


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("target", WRITES)
def test_a_stop_at_any_write_resumes_to_the_same_bytes(
    reference: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    when: str,
) -> None:
    shared, expected = reference
    run = tmp_path / "run"
    config = make_config(shared, shared / "pool.jsonl", external=True)
    with stop_at(monkeypatch, run, target, when):
        drive(run, config)
    got = outcome(run)
    assert got == expected
    rows = got["final/selected.jsonl"].splitlines()
    assert len(rows) == len(set(rows)) == 30  # no row picked twice


def test_next_draws_the_round_a_stopped_next_left_undrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's stuck run: `next` stopped after the reweight, before round 2's draw."""
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = tmp_path / "run"
    config = make_config(tmp_path, pool, external=True)
    init, feedback1, advance = verbs(run, config)[:3]
    init()
    feedback1()
    with stop_at(monkeypatch, run, "round-01/DONE.reweight", "after"), pytest.raises(Killed):
        advance()
    assert not (run / "round-02" / "picked.json").exists()
    with pytest.raises(
        KmqError, match=r"round 2 of \S+ has not been drawn yet: draw it with advance\(\)"
    ):
        IterativeSelection(run, config).take_scores(2, {})
    rows = IterativeSelection(run, config).advance()
    assert rows == run / "round-02" / "selected.jsonl" and rows.exists()
    with pytest.raises(KmqError, match="round 2 has no feedback yet"):
        IterativeSelection(run, config).advance()
