from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmq.config import SelectConfig
from kmq.errors import KmqError, ParameterError
from kmq.examples import Example, Message
from kmq.loop import IterateConfig, IterativeSelection, round_sizes
from tests.conftest import FakeEncoder

TOPICS = ["math", "code", "poem", "trivia", "cooking", "travel"]
UNEQUAL = [t for t, n in zip(TOPICS, (40, 20, 10, 8, 6, 6), strict=True) for _ in range(n)]
"""90 rows' topics in clusters of very different sizes."""


def write_pool(path: Path, n: int = 90, topics: Sequence[str] = ()) -> None:
    """``n`` rows cycling through the topics, or one row per entry of ``topics``."""
    rows = []
    for i in range(len(topics) or n):
        topic = topics[i] if topics else TOPICS[i % len(TOPICS)]
        rows.append(
            {
                "id": f"ex-{i}",
                "source": topic,
                "messages": [
                    {"role": "user", "content": f"{topic} question {i}"},
                    {"role": "assistant", "content": f"{topic} answer {i} " + "word " * (i % 5)},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


class FakeTrainer:
    """Records what it trained on; 'generates' the gold answer for some topics and noise else."""

    def __init__(self, crash_on_generate: int | None = None) -> None:
        self.trained: list[list[str]] = []
        self.generated_for: list[list[str]] = []
        self.inits: list[Path | None] = []
        self.crash_on_generate = crash_on_generate
        self.generate_calls = 0

    def train(
        self, examples: Sequence[Example], out_dir: Path, *, init: Path | None, seed: int
    ) -> Path:
        self.trained.append([ex.id for ex in examples])
        self.inits.append(init)
        ckpt = out_dir / "checkpoint"
        ckpt.mkdir()
        (ckpt / "ids.json").write_text(json.dumps([ex.id for ex in examples]))
        return ckpt

    def generate(
        self, checkpoint: Path, prompts: Sequence[Sequence[Message]], *, seed: int
    ) -> list[str]:
        self.generate_calls += 1
        if self.crash_on_generate == self.generate_calls:
            raise RuntimeError("killed while generating")
        self.generated_for.append([p[-1].content for p in prompts])
        return [fake_generation(p[-1].content) for p in prompts]


def fake_generation(prompt: str) -> str:
    """Right for math and code, wrong for everything else."""
    topic, _, number = prompt.split(" ")
    return f"{topic} answer {number}" if topic in ("math", "code") else "no idea"


class WordOverlapFeedback:
    """Higher = fewer gold words in the generation (more left to learn)."""

    name = "overlap"
    direction = "higher = fewer gold words generated; range [0, 1]"

    def score(
        self, prompts: Sequence[Sequence[Message]], gold: Sequence[str], generated: Sequence[str]
    ) -> np.ndarray:
        out = []
        for g, y in zip(gold, generated, strict=True):
            words = set(g.split())
            out.append(1.0 - len(words & set(y.split())) / len(words))
        return np.array(out)


class TopicEncoder(FakeEncoder):
    """Rows of one topic land close together: the topic's axis plus a little hashed noise."""

    name = "topic-encoder/v1"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        noise = super().encode(texts)[:, : len(TOPICS)] * 0.1
        axes = np.array(
            [[t.split()[0] == topic for topic in TOPICS] for t in texts], dtype=np.float32
        )
        out = axes + noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_config(tmp_path: Path, pool: Path, **kw: object) -> IterateConfig:
    select = SelectConfig(
        input=str(pool),
        out="",
        budget=30,
        k=6,
        seed=3,
        encoder=TopicEncoder(),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    options: dict[str, object] = {"pool": select, "rounds": 3, "feedback": "overlap"} | kw
    return IterateConfig(**options)  # type: ignore[arg-type]


def run_loop(
    tmp_path: Path, name: str, trainer: FakeTrainer | None = None, **kw: object
) -> IterativeSelection:
    pool = tmp_path / "pool.jsonl"
    if not pool.exists():
        write_pool(pool)
    loop = IterativeSelection(
        tmp_path / name,
        make_config(tmp_path, pool, **kw),
        trainer=trainer or FakeTrainer(),
        feedback=WordOverlapFeedback(),
    )
    loop.run()
    return loop


def final_ids(loop: IterativeSelection) -> list[str]:
    return [ex.id for ex in loop.examples(np.concatenate([loop.picked(r) for r in (1, 2, 3)]))]


def test_round_sizes_sum_to_budget() -> None:
    assert round_sizes(10, 3) == [4, 3, 3]
    assert round_sizes(9, 3) == [3, 3, 3]
    with pytest.raises(KmqError, match="budget=2 is smaller than rounds=3"):
        round_sizes(2, 3)


def test_full_loop_follows_algorithm_1(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    loop = run_loop(tmp_path, "run", trainer)
    ids = final_ids(loop)
    assert len(ids) == 30 and len(set(ids)) == 30  # exact budget, never a row twice
    state = loop.state()
    assert [r["size"] for r in state["rounds"]] == [10, 10, 10]
    first = state["rounds"][0]
    assert np.allclose(first["weights_before"], 1 / 6)  # w0 uniform
    for r in state["rounds"]:
        assert sum(r["weights_after"]) == pytest.approx(1.0)
        assert r["done"] == ["select", "train", "generate", "score", "reweight"]
    # continue mode: round r trains the previous checkpoint on the new rows only
    assert trainer.inits[0] is None and trainer.inits[1] is not None
    assert [len(t) for t in trainer.trained] == [10, 10, 10]
    # math and code are answered right: their clusters lose weight against the others
    weights = np.array(state["rounds"][-1]["weights_after"])
    labels = loop.labels
    topic_of = {int(labels[i]): loop.pool.examples[i].source for i in range(len(labels))}
    learned = [w for j, w in enumerate(weights) if topic_of.get(j) in ("math", "code")]
    other = [w for j, w in enumerate(weights) if topic_of.get(j) not in ("math", "code")]
    assert max(learned) < min(other)
    assert (tmp_path / "run" / "final" / "selected.jsonl").exists()
    by_source = state["rounds"][-1]["source_weights_after"]
    assert set(by_source) == set(TOPICS) and sum(by_source.values()) == pytest.approx(1.0)
    assert by_source["math"] < by_source["poem"]
    assert state["finished"]


@pytest.mark.parametrize("allocation", ["balanced", "proportional"])
def test_allocation_sets_round_one_weights(tmp_path: Path, allocation: str) -> None:
    from dataclasses import replace

    from kmq.allocation import weighted_quotas

    pool = tmp_path / "pool.jsonl"
    write_pool(pool, topics=UNEQUAL)
    config = make_config(tmp_path, pool)
    config.pool = replace(config.pool, allocation=allocation)
    loop = IterativeSelection(
        tmp_path / "run", config, trainer=FakeTrainer(), feedback=WordOverlapFeedback()
    )
    loop.run()
    sizes = np.bincount(loop.labels, minlength=6)
    assert sizes.max() >= 4 * sizes.min()  # the clusters differ in size
    expected = sizes / sizes.sum() if allocation == "proportional" else np.full(6, 1 / 6)
    first = loop.state()["rounds"][0]
    np.testing.assert_allclose(first["weights_before"], expected)
    drawn = np.bincount(loop.labels[loop.picked(1)], minlength=6)
    np.testing.assert_array_equal(drawn, weighted_quotas(10, sizes, expected))
    # Eq. 6 multiplies the feedback into w⁰: the prior's ratios survive where feedback is equal
    after = np.asarray(first["weights_after"])
    assert after.sum() == pytest.approx(1.0) and not np.allclose(after, expected)


def test_the_loop_refuses_equal_allocation() -> None:
    config = make_config(Path("unused"), Path("pool.jsonl"))
    from dataclasses import replace

    config.pool = replace(config.pool, allocation="equal")
    with pytest.raises(ParameterError, match=r"allocation must be balanced .* got 'equal'"):
        config.validate(feedback=False)


class GoldLengthFeedback:
    """Generation-free: the gold answer's word count (a stand-in for ``gold-pmi``)."""

    name = "gold-length"
    direction = "higher = longer gold answer"
    needs_generation = False

    def score(
        self, prompts: Sequence[Sequence[Message]], gold: Sequence[str], generated: Sequence[str]
    ) -> np.ndarray:
        assert all(g == "" for g in generated)
        return np.array([len(g.split()) for g in gold], dtype=float)


def test_a_generation_free_scorer_skips_generation(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    trainer = FakeTrainer()
    loop = IterativeSelection(
        tmp_path / "run",
        make_config(tmp_path, pool),
        trainer=trainer,
        feedback=GoldLengthFeedback(),
    )
    loop.run()
    assert trainer.generate_calls == 0 and len(trainer.trained) == 3
    for r in (1, 2, 3):
        assert "reads no generation" in loop.dir.marker("generate", r)["skipped"]
        assert not (loop.dir.round_dir(r) / "generations.jsonl").exists()
    means = loop.dir.read("weights.json", 1)["means"]
    assert max(m for m in means if m is not None) > min(m for m in means if m is not None)


@pytest.mark.parametrize("mode", ["continue", "restart"])
def test_no_train_picks_the_same_rows_without_training(tmp_path: Path, mode: str) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    runs = {}
    for train in (True, False):
        trainer = FakeTrainer()
        config = make_config(tmp_path, pool, train=train, trainer_options={"mode": mode})
        loop = IterativeSelection(
            tmp_path / f"run-{train}", config, trainer=trainer, feedback=GoldLengthFeedback()
        )
        loop.run()
        runs[train] = (final_ids(loop), trainer, loop)
    assert runs[True][0] == runs[False][0]
    assert len(runs[True][1].trained) == 3 and runs[False][1].trained == []
    untrained = runs[False][2]
    for r in (1, 2, 3):
        assert "reads no model" in untrained.dir.marker("train", r)["skipped"]
    assert untrained.state()["rounds"][0]["done"] == [
        "select",
        "train",
        "generate",
        "score",
        "reweight",
    ]


def test_no_train_is_refused_with_a_feedback_that_reads_generations(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    trainer = FakeTrainer()
    loop = IterativeSelection(
        tmp_path / "run",
        make_config(tmp_path, pool, train=False),
        trainer=trainer,
        feedback=WordOverlapFeedback(),
    )
    with pytest.raises(ParameterError, match="overlap scores the trained model's answers") as exc:
        loop.run()
    assert exc.value.parameter == "train"
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any work
    named = IterateConfig(pool=make_config(tmp_path, pool).pool, feedback="similarity", train=False)
    with pytest.raises(ParameterError, match="similarity scores"):
        IterativeSelection(tmp_path / "run2", named).init()


@pytest.mark.parametrize(("mode", "sizes"), [("continue", [10, 10, 10]), ("restart", [10, 20, 30])])
def test_each_round_scores_exactly_what_it_trained_on(
    tmp_path: Path, mode: str, sizes: list[int]
) -> None:
    """``restart`` trains the base model on every row so far and, as the official code and the
    README say, generates for and scores all of them; ``continue`` the new rows only."""
    trainer = FakeTrainer()
    loop = run_loop(tmp_path, "run", trainer, trainer_options={"mode": mode})
    assert trainer.inits[0] is None
    assert all((init is None) == (mode == "restart") for init in trainer.inits[1:])
    assert [len(t) for t in trainer.trained] == sizes
    row_of = {ex.id: i for i, ex in enumerate(loop.pool.examples)}
    for r, trained in enumerate(trainer.trained, start=1):
        prompts = [loop.pool.examples[row_of[i]].prompt[-1].content for i in trained]
        assert trainer.generated_for[r - 1] == prompts
        feedback = loop.dir.read_jsonl("feedback.jsonl", r)
        assert [row["id"] for row in feedback] == trained
        assert [row["cluster"] for row in feedback] == [
            int(loop.labels[row_of[i]]) for i in trained
        ]


def test_resume_after_a_crash_gives_the_same_selection(tmp_path: Path) -> None:
    reference = final_ids(run_loop(tmp_path, "reference"))
    pool = tmp_path / "pool.jsonl"
    config = make_config(tmp_path, pool)
    crashing = IterativeSelection(
        tmp_path / "crashed",
        config,
        trainer=FakeTrainer(crash_on_generate=2),
        feedback=WordOverlapFeedback(),
    )
    with pytest.raises(RuntimeError, match="killed"):
        crashing.run()
    assert (tmp_path / "crashed" / "round-02" / "DONE.train").exists()
    assert not (tmp_path / "crashed" / "round-02" / "DONE.generate").exists()
    resumed_trainer = FakeTrainer()
    resumed = IterativeSelection(
        tmp_path / "crashed", config, trainer=resumed_trainer, feedback=WordOverlapFeedback()
    )
    resumed.run()
    assert final_ids(resumed) == reference
    assert len(resumed_trainer.trained) == 1  # only round 3 was trained again


def test_a_changed_config_is_refused(tmp_path: Path) -> None:
    run_loop(tmp_path, "run")
    pool = tmp_path / "pool.jsonl"
    other = IterativeSelection(
        tmp_path / "run",
        make_config(tmp_path, pool, rounds=2),
        trainer=FakeTrainer(),
        feedback=WordOverlapFeedback(),
    )
    with pytest.raises(KmqError, match=r"another configuration: rounds: 3 in the run, 2 given"):
        other.run()


def test_init_accepts_a_config_that_cannot_change_the_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-progress, a relative vs absolute path, an equal cache dir: the same run."""
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = tmp_path / "run"
    IterativeSelection(run, make_config(tmp_path, pool, external=True)).start_external()
    monkeypatch.chdir(tmp_path)
    same = make_config(tmp_path, Path("pool.jsonl"), external=True)
    same.pool.progress = True
    same.pool.cache_dir = str(Path("cache"))
    IterativeSelection(run, same).start_external()
    saved = json.loads((run / "config.json").read_text())
    assert saved["pool"]["input"] == str(pool.resolve())
    other = make_config(tmp_path, Path("pool.jsonl"), external=True, rule="softmax")
    other.pool.seed = 4
    with pytest.raises(KmqError) as refused:
        IterativeSelection(run, other).start_external()
    assert 'pool.seed: 3 in the run, 4 given; rule: "paper" in the run, "softmax" given' in str(
        refused.value
    )


def test_external_trainer_mode_matches_the_built_in_loop(tmp_path: Path) -> None:
    reference = final_ids(run_loop(tmp_path, "reference"))
    pool = tmp_path / "pool.jsonl"
    loop = IterativeSelection(
        tmp_path / "ext", make_config(tmp_path, pool, external=True), feedback=WordOverlapFeedback()
    )
    rows_file = loop.start_external()
    for r in (1, 2, 3):
        picked = [json.loads(line) for line in rows_file.read_text().splitlines()]
        generations = {row["id"]: fake_generation(row["messages"][0]["content"]) for row in picked}
        loop.score(r, generations)
        with pytest.raises(KmqError, match="already has its feedback"):
            loop.take_scores(r, {})
        nxt = loop.advance()
        if r < 3:
            assert nxt is not None
            rows_file = nxt
        else:
            assert nxt is None
    assert final_ids(loop) == reference
    with pytest.raises(KmqError, match="trained externally"):
        _ = loop.trainer


def test_external_scores_mode(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    loop = IterativeSelection(
        tmp_path / "ext", make_config(tmp_path, pool, external=True), feedback=WordOverlapFeedback()
    )
    loop.start_external()
    with pytest.raises(KmqError, match="no feedback yet"):
        loop.advance()
    ids = loop.dir.read("picked.json", 1)["ids"]
    with pytest.raises(KmqError, match="no score for 1 rows"):
        loop.take_scores(1, {i: 0.5 for i in ids[1:]})
    loop.take_scores(1, {i: float(n % 3) for n, i in enumerate(ids)})
    assert loop.advance() is not None
    assert loop.dir.done("select", 2)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    budget=st.integers(3, 60),
    rounds=st.integers(1, 4),
    k=st.integers(2, 9),
    rule=st.sampled_from(["paper", "softmax"]),
    seed=st.integers(0, 1000),
)
def test_loop_properties(
    tmp_path_factory: pytest.TempPathFactory, budget: int, rounds: int, k: int, rule: str, seed: int
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    pool = tmp / "pool.jsonl"
    write_pool(pool)
    if budget < rounds:
        return
    config = make_config(tmp, pool, rounds=rounds, rule=rule)
    config.pool.budget, config.pool.k, config.pool.seed = budget, k, seed
    loop = IterativeSelection(
        tmp / "run", config, trainer=FakeTrainer(), feedback=WordOverlapFeedback()
    )
    result = loop.run()
    assert len(result.indices) == budget
    assert len(set(result.indices.tolist())) == budget
    for entry in loop.state()["rounds"]:
        assert sum(entry["weights_after"]) == pytest.approx(1.0)
        assert min(entry["weights_after"]) > 0
        assert sum(entry["quotas"]) == entry["size"]
