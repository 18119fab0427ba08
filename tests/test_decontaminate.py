"""--decontaminate: pool rows whose prompt shares a 13-gram with an evaluation text are dropped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kmq.decontaminate import EvalNgrams, find_contamination, read_eval, strings, words
from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.pipeline import select_file
from tests.test_pipeline import config

QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four."
)
SHORT = "How can I improve my time management skills?"  # 8 words: matched whole


def chat(user: str, answer: str = "ok", row: int = 0) -> Example:
    return Example(f"r{row}", (Message("user", user), Message("assistant", answer)), row)


def test_words_and_strings() -> None:
    assert words("Janet's ducks, LAY 16!") == ["janet", "s", "ducks", "lay", "16"]
    record = {"q": "a", "turns": ["b", {"x": "c"}], "n": 3, "none": None}
    assert list(strings(record)) == ["a", "b", "c"]


def test_eval_texts_by_length() -> None:
    grams = EvalNgrams(13)
    grams.add(QUESTION, ("gsm8k", "line 1"))
    grams.add(SHORT, ("vicuna", "line 1"))
    grams.add("#### 18", ("gsm8k", "line 1"))
    assert (grams.texts, grams.too_short) == (3, 1)
    assert grams.lengths == {13, 8}
    assert len(words(QUESTION)) - 13 + 1 + 1 == len(grams.origin)


def test_rows_whose_prompt_holds_an_eval_ngram_are_found() -> None:
    grams = EvalNgrams(13)
    grams.add(QUESTION, ("gsm8k.jsonl", "line 1"))
    grams.add(SHORT, ("vicuna.jsonl", "line 3"))
    twelve = " ".join(words(QUESTION)[:12])
    pool = [
        chat(
            "Solve: JANET'S ducks lay 16 eggs per day.  She eats three for breakfast every", row=0
        ),
        chat(twelve + " nothing else", row=1),  # 12 words in a row: not enough
        chat("hello", answer=QUESTION, row=2),  # only the response holds it: the prompt is clean
        chat(f"Tell me: {SHORT.lower()} Thanks!", row=3),
        chat("How can I improve my time skills?", row=4),
    ]
    found = find_contamination(pool, grams)
    assert found.removed.tolist() == [0, 3]
    assert found.matches[0][:2] == ("gsm8k.jsonl", "line 1")
    assert found.matches[0][2] == "janet s ducks lay 16 eggs per day she eats three for breakfast"
    assert found.matches[1] == ("vicuna.jsonl", "line 3", " ".join(words(SHORT)))
    assert found.mask(5).tolist() == [True, False, False, True, False]


def test_eval_files_in_any_layout(tmp_path: Path) -> None:
    jsonl = tmp_path / "gsm8k.jsonl"
    jsonl.write_text(json.dumps({"question": QUESTION, "answer": "#### 18"}) + "\n")
    array = tmp_path / "bench.json"
    array.write_text(json.dumps([{"id": 1, "turns": [SHORT]}]))
    table = tmp_path / "truthfulqa.csv"
    with table.open("w", newline="") as fh:
        csv.writer(fh).writerows([["Question", "Best"], ["What happens if you eat seeds?", "x"]])
    grams = read_eval([jsonl, array, table])
    # texts: the question, "#### 18", SHORT, the CSV question and "x" (the id 1 is no string);
    # under 8 words: "#### 18", the CSV question (6 words) and "x"
    assert (grams.texts, grams.too_short) == (5, 3)
    assert grams.origin[" ".join(words(SHORT))] == (str(array), "row 0")
    with pytest.raises(KmqError, match=r"^n must be a positive integer, got 0"):
        read_eval([jsonl], n=0)


def write_chat_pool(path: Path) -> None:
    rows = [
        {"id": f"ex-{i}", "prompt": f"question number {i} on topic {i % 3}", "completion": "a"}
        for i in range(30)
    ]
    rows[4]["prompt"] = "Please answer. " + QUESTION
    rows[9]["prompt"] = SHORT
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_select_drops_and_records_contaminated_rows(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_chat_pool(pool)
    evals = tmp_path / "gsm8k.jsonl"
    evals.write_text(
        json.dumps({"question": QUESTION}) + "\n" + json.dumps({"question": SHORT}) + "\n"
    )
    run = select_file(config(tmp_path, pool, budget=28, k=2, decontaminate=[str(evals)]))
    assert run.manifest.counts["decontaminated"] == 2
    assert run.manifest.outputs["contamination"] == "contamination.jsonl"
    picked = pq.read_table(tmp_path / "out" / "selection.parquet").column("id").to_pylist()
    assert len(picked) == 28 and not {"ex-4", "ex-9"} & set(picked)
    lines = (tmp_path / "out" / "contamination.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert (first["index"], first["id"], first["eval_file"]) == (4, "ex-4", str(evals))
    assert first["eval_location"] == "line 1"


def test_streaming_and_bad_ngram_are_refused(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_chat_pool(pool)
    with pytest.raises(
        KmqError, match=r"^decontaminate runs on pools read in memory, not streaming"
    ):
        select_file(config(tmp_path, pool, streaming=True, decontaminate=["e.jsonl"]))
    with pytest.raises(KmqError, match=r"^ngram must be a positive integer, got -1"):
        select_file(config(tmp_path, pool, ngram=-1))
