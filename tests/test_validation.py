"""Bad inputs are refused early (before any embedding) with one ``error:`` line; what cannot be
checked early (the vectors, the feedback) is checked where it comes back."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmq import loop as loop_module
from kmq import outdir, pools
from kmq.cli import main
from kmq.errors import KmqError
from kmq.examples import Message
from kmq.loop import IterativeSelection
from kmq.pipeline import select_file
from kmq.stages import EMBED_MAX_CHARS, cap_texts
from tests.conftest import FakeEncoder
from tests.test_loop import WordOverlapFeedback, make_config
from tests.test_loop import write_pool as write_topic_pool
from tests.test_pipeline import config, write_pool


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    write_pool(path)  # 60 rows, ids ex-0 .. ex-59
    return path


@pytest.fixture
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedding fails the test: every refusal below must come before it."""

    def embed(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded before the input was checked")

    monkeypatch.setattr(pools, "embed_pool", embed)
    monkeypatch.setattr(loop_module, "embed_pool", embed)


def exclude_files(folder: Path) -> dict[str, Path]:
    ids = [f"ex-{i}" for i in range(60)]
    files = {
        "all.txt": "\n".join(ids) + "\n",
        "most.txt": "\n".join(ids[:55]) + "\n",
        "bad.jsonl": '{"id": "ex-1"}\n{"id": \n',
        "bad.json": '{"id": "a"',
        "object.json": '{"ids": ["ex-1"]}',
        "number.json": "[1, 2, true]",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = folder / name
        paths[name].write_text(text)
    paths["latin1.txt"] = folder / "latin1.txt"
    paths["latin1.txt"].write_bytes(b"caf\xe9\n")
    paths["noid.parquet"] = folder / "noid.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), paths["noid.parquet"])
    paths["folder"] = folder
    return paths


SELECT_CASES = [
    ("budget above n", ["--budget", "5000"], "--budget 5000 exceeds the 60 rows left to select"),
    ("k above n", ["--k", "500"], "--k 500 exceeds the 60 valid rows"),
    ("k-grid above n", ["--k", "auto", "--k-grid", "8,1000"], "--k-grid [8, 1000] has a k above"),
    ("k-grid below 2", ["--k", "auto", "--k-grid", "0,-1"], "--k-grid must list integers >= 2"),
    ("max-length 0", ["--max-length", "0"], "--max-length must be a positive integer, got 0"),
    ("niter 0", ["--niter", "0"], "--niter must be an integer >= 1, got 0"),
    ("niter -1", ["--niter", "-1"], "--niter must be an integer >= 1, got -1"),
    ("batch-size 0", ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("seed -1", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("silhouette 0", ["--silhouette-sample", "0"], "--silhouette-sample must be an integer >= 2"),
    ("exclude all", ["--exclude", "all.txt"], "names every one of the 60 valid rows"),
    (
        "exclude most",
        ["--exclude", "most.txt", "--budget", "10"],
        "--budget 10 exceeds the 5 rows left to select of 60 (55 excluded by --exclude",
    ),
    ("exclude bad JSONL", ["--exclude", "bad.jsonl"], "bad.jsonl, line 2: not valid JSON"),
    ("exclude bad JSON", ["--exclude", "bad.json"], "bad.json, line 1 column 11: not valid JSON"),
    (
        "exclude JSON object",
        ["--exclude", "object.json"],
        'object.json: a JSON object, expected an array of ids (["a", "b"]) or of objects',
    ),
    ("exclude bool id", ["--exclude", "number.json"], "number.json, item 3: expected an id"),
    ("exclude latin-1", ["--exclude", "latin1.txt"], "latin1.txt: not UTF-8 text (byte 3)"),
    ("exclude parquet", ["--exclude", "noid.parquet"], "noid.parquet: no 'id' column (it has x)"),
    ("exclude folder", ["--exclude", "folder"], "is a folder; give a file of ids"),
]


@pytest.mark.parametrize(
    ("name", "flags", "message"), SELECT_CASES, ids=[c[0] for c in SELECT_CASES]
)
@pytest.mark.parametrize("command", ["select", "iterate init"])
def test_bad_arguments_are_refused_before_embedding(
    tmp_path: Path,
    pool: Path,
    no_embedding: None,
    capsys: pytest.CaptureFixture[str],
    command: str,
    name: str,
    flags: list[str],
    message: str,
) -> None:
    files = exclude_files(tmp_path)
    flags = [str(files[f]) if f in files else f for f in flags]
    defaults = {"--budget": "12", "--k": "6"}
    given = [f for f in flags if f.startswith("--")]
    args = [a for flag, value in defaults.items() if flag not in given for a in (flag, value)]
    target = ["--out", str(tmp_path / "out")]
    if command == "iterate init":
        target = ["--run", str(tmp_path / "run"), "--rounds", "2"]
    argv = [*command.split(), str(pool), *target, *args, *flags, "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_out_naming_a_file_or_a_place_under_one_is_refused(
    tmp_path: Path, pool: Path, no_embedding: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for out, message in (
        (pool, f"--out {pool} is a file; give a folder"),
        (pool / "sub", f"--out {pool / 'sub'} lies under {pool}, which is a file"),
    ):
        assert main(["select", str(pool), "--out", str(out), "--budget", "5"]) == 2
        assert message in capsys.readouterr().err
    assert pool.is_file()


def test_an_unwritable_out_is_refused(
    tmp_path: Path,
    pool: Path,
    no_embedding: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the permission bits themselves do not stop root, which runs this suite in places
    monkeypatch.setattr(outdir.os, "access", lambda path, mode: False)
    out = tmp_path / "locked" / "out"
    assert main(["select", str(pool), "--out", str(out), "--budget", "5"]) == 2
    assert f"--out {out}: cannot write in {tmp_path} (permission denied)" in capsys.readouterr().err


def test_every_row_rejected_still_writes_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    row = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    bad.write_text(f"{row}\n" * 3)
    out = tmp_path / "out"
    argv = ["select", str(bad), "--out", str(out), "--on-invalid", "skip", "--budget", "1"]
    assert main([*argv, "--method", "random", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        f"every row was rejected (3), nothing to select; each row and its reason are in "
        f"{out / 'rejects.jsonl'}"
    ) in err
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == ["line 1", "line 2", "line 3"]
    assert main(["inspect", str(out)]) == 2
    assert "only rejects.jsonl" in capsys.readouterr().err


class ConstantEncoder(FakeEncoder):
    """Answers a fixed vector for the texts ``bad`` says, hashed vectors for the others."""

    name = "constant/v1"

    def __init__(self, value: float, bad: str = "") -> None:
        super().__init__()
        self.value = value
        self.bad = bad

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = super().encode(texts)
        hit = np.array([self.bad in t for t in texts])
        out[hit] = self.value
        return out


@pytest.mark.parametrize(
    ("value", "bad", "message"),
    [
        (0.0, "", "returned an all-zero vector for every one of the 60 rows"),
        (np.nan, "question 7 ", "returned 1 of 60 vectors with NaN/inf"),
        (np.inf, "", "returned 60 of 60 vectors with NaN/inf"),
    ],
)
def test_unusable_vectors_are_refused(
    tmp_path: Path, pool: Path, value: float, bad: str, message: str
) -> None:
    with pytest.raises(KmqError, match=message):
        select_file(config(tmp_path, pool, encoder=ConstantEncoder(value, bad)))
    assert not (tmp_path / "out").exists()


def test_a_few_zero_vectors_only_warn(
    tmp_path: Path, pool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kmq"):
        select_file(config(tmp_path, pool, encoder=ConstantEncoder(0.0, "question 7 ")))
    assert "returned 1 all-zero vectors of 60" in caplog.text


class RecordingFeedback(WordOverlapFeedback):
    def __init__(self) -> None:
        self.generated: list[str] = []

    def score(
        self, prompts: Sequence[Sequence[Message]], gold: Sequence[str], generated: Sequence[str]
    ) -> np.ndarray:
        self.generated += list(generated)
        return super().score(prompts, gold, generated)


def external_run(tmp_path: Path) -> tuple[IterativeSelection, RecordingFeedback, list[str]]:
    pool = tmp_path / "topics.jsonl"
    write_topic_pool(pool)
    feedback = RecordingFeedback()
    run = IterativeSelection(
        tmp_path / "run", make_config(tmp_path, pool, external=True), feedback=feedback
    )
    run.start_external()
    return run, feedback, run.dir.read("picked.json", 1)["ids"]


def test_a_null_generation_is_not_scored_as_the_text_none(tmp_path: Path) -> None:
    run, feedback, ids = external_run(tmp_path)
    generations: dict[str, str | None] = {i: "an answer" for i in ids}
    generations[ids[0]] = None
    run.score(1, generations)
    assert "None" not in feedback.generated and len(feedback.generated) == len(ids) - 1
    rows = run.dir.read_jsonl("feedback.jsonl", 1)
    assert rows[0]["score"] is None and all(r["score"] is not None for r in rows[1:])
    assert run.dir.marker("score", 1)["missing"] == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_feedback_scores_are_refused(tmp_path: Path, bad: float) -> None:
    run, _, ids = external_run(tmp_path)
    scores = {i: 1.0 for i in ids} | {ids[2]: bad}
    with pytest.raises(KmqError, match=f"1 scores are not finite numbers .* id '{ids[2]}'"):
        run.take_scores(1, scores)
    assert not run.dir.done("score", 1)


def test_a_non_finite_score_from_a_scorer_is_recorded_as_missing(tmp_path: Path) -> None:
    run, _, ids = external_run(tmp_path)
    run.save_feedback(1, run.examples(run.picked(1)), np.r_[np.inf, np.ones(len(ids) - 1)], 0.0)
    rows = run.dir.read_jsonl("feedback.jsonl", 1)
    assert rows[0]["score"] is None and run.dir.marker("score", 1)["missing"] == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('"score": NaN', "the score of id 'ID' is nan, not a finite number"),
        ('"score": 1e999', "the score of id 'ID' is inf, not a finite number"),
        ('"score": true', "the score of id 'ID' is True, not a finite number"),
        ('"generation": 42', "the generation of id 'ID' is 42, not a string (or null for none)"),
    ],
)
def test_cli_feedback_files_with_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    run, _, ids = external_run(tmp_path)
    flag = "--scores" if "score" in line else "--generations"
    path = tmp_path / "feedback.jsonl"
    path.write_text("".join(f'{{"id": "{i}", {line}}}\n' for i in ids))
    assert main(["iterate", "feedback", "1", "--run", str(run.dir.path), flag, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " + message.replace("ID", ids[0]) in err
    assert "Traceback" not in err


def test_a_long_text_is_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    huge = "lorem ipsum " * 500_000  # 6 MB
    with caplog.at_level(logging.WARNING, logger="kmq"):
        texts = cap_texts(["short", huge], ["a", "big"])
    assert texts == ["short", huge[:EMBED_MAX_CHARS]]
    assert "1 rows are longer than 50,000 characters: only their first 50,000 are embedded" in (
        caplog.text
    )
    assert "id big, 6,000,000 characters" in caplog.text
    assert cap_texts(["short"], ["a"]) == ["short"]


class LengthRecorder(FakeEncoder):
    name = "length-recorder/v1"

    def __init__(self) -> None:
        super().__init__()
        self.longest = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.longest = max([self.longest, *map(len, texts)])
        return super().encode(texts)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_5mb_row_is_embedded_up_to_the_cap(
    tmp_path: Path, pool: Path, streaming: bool, caplog: pytest.LogCaptureFixture
) -> None:
    big = {
        "id": "big",
        "messages": [
            {"role": "user", "content": "x " * 2_500_000},
            {"role": "assistant", "content": "ok"},
        ],
    }
    with pool.open("a") as fh:
        fh.write(json.dumps(big) + "\n")
    encoder = LengthRecorder()
    with caplog.at_level(logging.WARNING, logger="kmq"):
        select_file(config(tmp_path, pool, encoder=encoder, streaming=streaming))
    assert encoder.longest == EMBED_MAX_CHARS
    assert "(the longest: id big, 5,000,000 characters)" in caplog.text
