"""In-memory inputs: records, a Dataset, a DataFrame or an Arrow table, read as files are."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kmq
from kmq.config import SelectConfig
from kmq.errors import InputError, KmqError
from kmq.formats import FieldMap, load_pool
from kmq.pipeline import select_file
from tests.test_pipeline import config, write_pool

ALPACA = [
    {"instruction": "Add 2 and 2.", "input": "", "response": "4", "source": "math"},
    {"instruction": "Translate.", "input": "chat", "response": "cat", "source": "lang"},
    {"instruction": "Name a colour.", "input": "", "response": "red", "source": "misc"},
]


def as_kind(records: list[dict[str, Any]], kind: str) -> Any:
    if kind == "list":
        return records
    if kind == "arrow":
        return pa.Table.from_pylist(records)
    if kind == "pandas":
        pandas = pytest.importorskip("pandas")
        return pandas.DataFrame(records)
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_list(records)


@pytest.mark.parametrize("kind", ["list", "arrow", "pandas", "dataset"])
def test_records_are_detected_like_a_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    from_file = load_pool(path)
    pool = load_pool(as_kind(ALPACA, kind))
    assert (pool.format, pool.file_kind, str(pool.path)) == ("alpaca", "memory", "<records>")
    assert [e.messages for e in pool.examples] == [e.messages for e in from_file.examples]
    assert [(e.id, e.row, e.source) for e in pool.examples] == [
        ("row-0", 0, "math"),
        ("row-1", 1, "lang"),
        ("row-2", 2, "misc"),
    ]
    assert pool.n_records == 3 and len(pool.sha256) == 64


def test_field_mapping_and_rejects_name_the_row() -> None:
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "", "answer": "0"}]
    fields = FieldMap(prompt_field="question", response_field="answer")
    with pytest.raises(InputError, match=r"<records>, row 1, field 'question': empty turn"):
        load_pool(rows, fields=fields)
    pool = load_pool(rows, fields=fields, on_invalid="skip")
    assert [e.id for e in pool.examples] == ["row-0"] and len(pool.rejects) == 1


def test_unreadable_inputs_say_what_is_accepted() -> None:
    with pytest.raises(KmqError, match="cannot read a set as a pool: pass a path, a list"):
        load_pool({1, 2})
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA)})
    with pytest.raises(KmqError, match=r"several splits \(train\); pass one of them"):
        load_pool(splits)


def test_select_array_api_points_records_to_select_file() -> None:
    with pytest.raises(KmqError, match=r"got records \(list\).*select_file\(SelectConfig"):
        kmq.select(ALPACA, 2)


def pool_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "pool.jsonl"
    write_pool(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def memory_config(tmp_path: Path, data: Any, **kw: Any) -> SelectConfig:
    return replace(config(tmp_path, tmp_path, **kw), input=data)


def test_select_a_dataset_and_hand_it_back(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records = pool_records(tmp_path)
    data = datasets.Dataset.from_list(records)
    run = select_file(memory_config(tmp_path, data))
    table = pq.read_table(tmp_path / "out" / "selection.parquet").to_pylist()
    assert run.rows == [r["index"] for r in table]
    assert data.select(run.rows)["id"] == [r["id"] for r in table]
    assert run.to_dataset()["id"] == [r["id"] for r in table]
    assert run.to_dataset().features == data.features
    messages = run.records("messages")
    assert messages[0]["messages"][0]["role"] == "user" and messages[0]["id"] == table[0]["id"]
    assert run.manifest.config["input"] == "<records: Dataset, 60 rows>"
    assert run.manifest.input["kind"] == "memory"
    written = (tmp_path / "out" / "selected.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in written) == sorted(r["id"] for r in table)


def test_same_records_same_selection_whatever_the_container(tmp_path: Path) -> None:
    records = pool_records(tmp_path)
    a = select_file(memory_config(tmp_path, records, out=str(tmp_path / "a")))
    b = select_file(memory_config(tmp_path, pa.Table.from_pylist(records), out=str(tmp_path / "b")))
    assert a.rows == b.rows
    assert a.records() == [records[row] for row in a.rows]


def test_streaming_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(KmqError, match=r"^streaming reads files"):
        select_file(memory_config(tmp_path, pool_records(tmp_path), streaming=True))
