"""kmq.formats: every record format × file kind, every bad-input class, write-back, real data."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmq.errors import FormatError, InputError, KmqError, Reject
from kmq.examples import Message, Role
from kmq.formats import (
    FORMATS,
    FieldMap,
    LoadedPool,
    load_pool,
    write_rejects,
    write_selected,
)

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def msgs(*turns: tuple[Role, str]) -> tuple[Message, ...]:
    return tuple(Message(role, content) for role, content in turns)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def gzip_copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes()))
    return dst


# CRLF line ends, a quoted field spanning two lines, a blank line, doubled quotes. Written by
# the tests rather than kept as a fixture file, so that git's line-end conversion cannot alter it.
CSV_BYTES = (
    b'id,prompt,completion,score\r\nc1,"Write a haiku\r\nabout rain.","Soft rain on the roof",'
    b'0.5\r\nc2,Say hi,Hi!,1.25\r\n\r\nc3,"Quote: ""carpe diem""",Seize the day,-2\r\n'
)


def csv_pool(tmp_path: Path, data: bytes = CSV_BYTES) -> Path:
    path = tmp_path / "pool.csv"
    path.write_bytes(data)
    return path


def alpaca_records() -> list[dict[str, Any]]:
    return json.loads((FIXTURES / "alpaca.json").read_text(encoding="utf-8"))


def strip_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alpaca records with one column type each (Arrow needs uniform columns)."""
    return [{k: v for k, v in r.items() if k not in ("history", "system")} for r in records]


# ---------------------------------------------------------------------------------------------
# record formats


def test_messages_string_parts_and_multi_turn() -> None:
    pool = load_pool(FIXTURES / "messages.jsonl")
    assert (pool.format, pool.file_kind, pool.compressed) == ("messages", "jsonl", False)
    assert pool.n_records == 3
    assert not pool.rejects
    first, parts, multi = pool.examples
    assert first.id == "m1"
    assert first.source == "chat"
    assert first.messages == msgs(
        ("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!")
    )
    assert parts.messages == msgs(("user", "Describe\nthis."), ("assistant", "A cat."))
    assert multi.id == "3"  # integer ids become strings
    assert multi.source is None
    assert [m.role for m in multi.messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert multi.messages[0].content == "  What is 2+2?  "  # text kept exactly
    assert multi.messages[3].content == ""  # an empty assistant turn is allowed
    assert [e.row for e in pool.examples] == [0, 1, 2]  # blank lines are not records
    assert multi.fields["messages"][3]["tool_calls"] == []


def test_sharegpt_function_call_and_observation() -> None:
    pool = load_pool(FIXTURES / "sharegpt.json")
    assert (pool.format, pool.file_kind) == ("sharegpt", "json")
    tools, plain = pool.examples
    assert [m.role for m in tools.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert tools.messages[0].content == "You can call tools."
    assert tools.messages[3].content == '{"result": 5}'
    assert tools.fields["tools"] == '[{"name": "add"}]'
    assert plain.messages == msgs(("user", "Hello"), ("assistant", "Hi! How can I help?"))
    assert [e.id for e in pool.examples] == ["row-0", "row-1"]


def test_alpaca_input_system_and_history() -> None:
    pool = load_pool(FIXTURES / "alpaca.json")
    assert pool.format == "alpaca"
    with_input, no_input, history = pool.examples
    assert with_input.messages == msgs(
        ("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")
    )
    assert no_input.messages == msgs(("user", "Name a primary colour."), ("assistant", "Red"))
    assert history.messages == msgs(
        ("system", "You are a painter."),
        ("user", "Name a colour."),
        ("assistant", "Green"),
        ("user", "Another one."),
        ("assistant", "Yellow"),
        ("user", "And another?"),
        ("assistant", "Blue"),
    )


def test_alpaca_with_response_field() -> None:
    pool = load_pool(FIXTURES / "gpteacher.json")
    assert pool.format == "alpaca"
    assert pool.examples[0].messages == msgs(
        ("user", "Write a Python function that adds two numbers.\n\na=1, b=2"),
        ("assistant", "def add(a, b):\n    return a + b"),
    )
    assert pool.examples[1].response == "It lists files."


def test_prompt_completion_and_prompt_response(tmp_path: Path) -> None:
    pool = load_pool(FIXTURES / "prompt_completion.jsonl")
    assert pool.format == "prompt-completion"
    assert pool.examples[0].messages == msgs(
        ("user", "Q: Who wrote Hamlet?\nA:"), ("assistant", " Shakespeare")
    )
    path = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "p", "response": "r"}])
    assert load_pool(path).examples[0].messages == msgs(("user", "p"), ("assistant", "r"))


def test_lima_plain_strings_alternate() -> None:
    pool = load_pool(FIXTURES / "lima.jsonl")
    assert pool.format == "lima"
    assert pool.examples[0].source == "stackexchange"
    odd = pool.examples[1]
    assert [m.role for m in odd.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert odd.response == "To get to the other side."


def test_self_instruct_uses_first_instance() -> None:
    pool = load_pool(FIXTURES / "self_instruct.jsonl")
    assert pool.format == "self-instruct"
    capital, joke = pool.examples
    assert capital.id == "seed_task_0"
    assert capital.messages == msgs(
        ("user", "Give the capital of the country.\n\nFrance"), ("assistant", "Paris")
    )
    assert joke.messages[0] == Message("user", "Tell a one-line joke.")


def test_mapped_prompt_response_with_id_source_system() -> None:
    fields = FieldMap(
        prompt_field="question",
        response_field="answer",
        system_field="sys",
        id_field="uid",
        source_field="topic",
    )
    pool = load_pool(FIXTURES / "mapped.jsonl", fields=fields)
    assert pool.format == "mapped"
    first, second = pool.examples
    assert (first.id, first.source) == ("q-1", "math")
    assert first.messages == msgs(
        ("system", "Show your work."),
        ("user", "What is 12*3?"),
        ("assistant", "12*3 = 36\n#### 36"),
    )
    assert second.messages[0] == Message("user", "What is 7+5?")  # empty system: no turn


def test_mapped_messages_field_detects_turn_style() -> None:
    pool = load_pool(FIXTURES / "mapped_turns.jsonl", fields=FieldMap(messages_field="dialog"))
    assert pool.format == "mapped"
    assert [e.messages for e in pool.examples] == [
        msgs(("user", "Ping"), ("assistant", "Pong")),
        msgs(("user", "Marco"), ("assistant", "Polo")),
        msgs(("user", "Knock knock"), ("assistant", "Who's there?")),
    ]


def test_csv_strings_locations_and_quality(tmp_path: Path) -> None:
    pool = load_pool(csv_pool(tmp_path), quality_field="score")
    assert (pool.format, pool.file_kind) == ("prompt-completion", "csv")
    assert [e.id for e in pool.examples] == ["c1", "c2", "c3"]
    assert pool.examples[0].messages[0].content == "Write a haiku\r\nabout rain."
    assert pool.examples[2].messages[0].content == 'Quote: "carpe diem"'
    assert pool.quality is not None
    assert pool.quality.dtype == np.float64
    assert pool.quality.tolist() == [0.5, 1.25, -2.0]


def test_csv_reject_names_row_and_line(tmp_path: Path) -> None:
    path = csv_pool(tmp_path, CSV_BYTES.replace(b"Hi!,1.25", b"Hi!,lots"))
    with pytest.raises(InputError) as info:
        load_pool(path, quality_field="score")
    assert str(info.value).startswith(f"{path}, row 1 (line 4), field 'score': expected a number")


def test_explicit_format_overrides_detection() -> None:
    with pytest.raises(InputError) as info:
        load_pool(FIXTURES / "alpaca.json", format="prompt-completion")
    message = str(info.value)
    assert "row 0, field 'prompt': missing required field" in message
    assert "format 'prompt-completion'" in message
    pool = load_pool(FIXTURES / "lima.jsonl", format="sharegpt")  # conversations either way
    assert pool.format == "sharegpt"
    assert len(pool.examples) == 2


def test_detection_takes_the_majority(tmp_path: Path) -> None:
    records = [*strip_history(alpaca_records()), {"prompt": "p", "completion": "c"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    pool = load_pool(path, on_invalid="skip")
    assert pool.format == "alpaca"
    assert len(pool.examples) == 3
    assert pool.rejects == [Reject(str(path), "line 4", "instruction", "missing required field", 3)]


# ---------------------------------------------------------------------------------------------
# file kinds and write-back


def make_kind(kind: str, tmp_path: Path) -> Path:
    """The same small pool in one file kind."""
    if kind == "jsonl":
        return FIXTURES / "messages.jsonl"
    if kind == "jsonl.gz":
        return gzip_copy(FIXTURES / "messages.jsonl", tmp_path / "pool.jsonl.gz")
    if kind == "gzip-without-suffix":
        return gzip_copy(FIXTURES / "messages.jsonl", tmp_path / "pool.jsonl")
    if kind == "jsonl-in-json":
        return Path(shutil.copy(FIXTURES / "messages.jsonl", tmp_path / "pool.json"))
    if kind == "json":
        return FIXTURES / "alpaca.json"
    if kind == "json.gz":
        return gzip_copy(FIXTURES / "alpaca.json", tmp_path / "pool.json.gz")
    if kind == "csv":
        return csv_pool(tmp_path)
    table = pa.Table.from_pylist(strip_history(alpaca_records()))
    if kind == "parquet":
        pq.write_table(table, tmp_path / "pool.parquet")
        return tmp_path / "pool.parquet"
    if kind == "parquet.gz":
        pq.write_table(table, tmp_path / "plain.parquet")
        return gzip_copy(tmp_path / "plain.parquet", tmp_path / "pool.parquet.gz")
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(strip_history(alpaca_records()))
    if kind == "hf-disk":
        dataset.save_to_disk(str(tmp_path / "pool"))
    else:
        datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(
            str(tmp_path / "pool")
        )
    return tmp_path / "pool"


KINDS = {  # kind → (file_kind, compressed, output name)
    "jsonl": ("jsonl", False, "selected.jsonl"),
    "jsonl.gz": ("jsonl", True, "selected.jsonl.gz"),
    "gzip-without-suffix": ("jsonl", True, "selected.jsonl.gz"),
    "jsonl-in-json": ("jsonl", False, "selected.jsonl"),
    "json": ("json", False, "selected.json"),
    "json.gz": ("json", True, "selected.json.gz"),
    "csv": ("csv", False, "selected.csv"),
    "parquet": ("parquet", False, "selected.parquet"),
    "parquet.gz": ("parquet", True, "selected.parquet"),
    "hf-disk": ("hf-disk", False, "selected"),
    "hf-disk-dict": ("hf-disk", False, "selected"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_loads_and_round_trips(kind: str, tmp_path: Path) -> None:
    source = make_kind(kind, tmp_path)
    pool = load_pool(source)
    file_kind, compressed, name = KINDS[kind]
    assert (pool.file_kind, pool.compressed) == (file_kind, compressed)
    assert len(pool.examples) == 3
    assert pool.n_records == 3
    out = write_selected(pool, [2, 0], tmp_path / "out")
    assert out == tmp_path / "out" / name
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no temp files left
    again = load_pool(out)
    assert (again.format, again.file_kind) == (pool.format, pool.file_kind)
    chosen = [pool.examples[0], pool.examples[2]]
    assert [e.messages for e in again.examples] == [e.messages for e in chosen]
    assert [e.source for e in again.examples] == [e.source for e in chosen]
    assert [dict(e.fields) for e in again.examples] == [dict(e.fields) for e in chosen]


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz"])
def test_jsonl_selected_lines_are_byte_identical(kind: str, tmp_path: Path) -> None:
    pool = load_pool(make_kind(kind, tmp_path))
    out = write_selected(pool, [2, 1], tmp_path / "out")
    data = out.read_bytes()
    if pool.compressed:
        assert data[:2] == b"\x1f\x8b"
        data = gzip.decompress(data)
    lines = [
        line for line in (FIXTURES / "messages.jsonl").read_bytes().splitlines(True) if line.strip()
    ]
    assert data == lines[1] + lines[2]


def test_csv_selected_rows_keep_header_and_bytes(tmp_path: Path) -> None:
    pool = load_pool(csv_pool(tmp_path))
    out = write_selected(pool, [0, 2], tmp_path / "out")
    assert out.read_bytes() == (
        b'id,prompt,completion,score\r\nc1,"Write a haiku\r\nabout rain.","Soft rain on the roof",'
        b'0.5\r\nc3,"Quote: ""carpe diem""",Seize the day,-2\r\n'
    )


def test_hf_dataset_dict_without_train_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "one"))
    assert len(load_pool(tmp_path / "one").examples) == 1
    datasets.DatasetDict({"a": dataset, "b": dataset}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(KmqError, match="splits a, b and no 'train'"):
        load_pool(tmp_path / "two")


def test_hf_write_replaces_an_earlier_selection(tmp_path: Path) -> None:
    pool = load_pool(make_kind("hf-disk", tmp_path))
    write_selected(pool, [0, 1, 2], tmp_path / "out")
    out = write_selected(pool, [1], tmp_path / "out")
    assert [e.messages for e in load_pool(out).examples] == [pool.examples[1].messages]
    assert sorted(p.name for p in out.parent.iterdir()) == ["selected"]


def test_hub_dataset_through_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}] * 2)
    calls: list[tuple[str, str]] = []

    def fake_load(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return dataset

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.chdir(tmp_path)
    pool = load_pool("someone/tiny-pool")
    assert (pool.file_kind, pool.format, len(pool.examples)) == ("hf-hub", "prompt-completion", 2)
    assert calls == [("someone/tiny-pool", "train")]
    assert write_selected(pool, [1], tmp_path / "out") == tmp_path / "out" / "selected"


def test_hub_unreachable_says_local_paths_work(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(name: str, split: str) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(KmqError) as info:
        load_pool("someone/pool-that-is-not-here")
    message = str(info.value)
    assert "Hugging Face Hub" in message
    assert "no network" in message
    assert "unreachable" in message
    assert "local files and save_to_disk folders load offline" in message


def test_missing_datasets_gives_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_kind("hf-disk", tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(KmqError, match=r"pip install 'kmq\[hf\]'"):
        load_pool(source)


def test_write_selected_refuses_rejected_rows_and_changed_input(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    shutil.copy(FIXTURES / "prompt_completion.jsonl", path)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("not json\n")
    pool = load_pool(path, on_invalid="skip")
    with pytest.raises(KmqError, match=r"rows \[2\] are not valid examples"):
        write_selected(pool, [0, 2], tmp_path / "out")
    with pytest.raises(KmqError, match=r"rows \[7\]"):
        write_selected(pool, [7], tmp_path / "out")
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n")
    with pytest.raises(KmqError, match="changed since it was loaded"):
        write_selected(pool, [0], tmp_path / "out")


def test_write_rejects_jsonl(tmp_path: Path) -> None:
    rejects = [
        Reject("p.jsonl", "line 3", "messages[1].content", "empty turn", 2),
        Reject("p.jsonl", "line 9", None, "not valid JSON: Expecting value", 8),
    ]
    target = tmp_path / "sub" / "rejects.jsonl"
    write_rejects(rejects, target)
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {
            "path": "p.jsonl",
            "location": "line 3",
            "row": 2,
            "field": "messages[1].content",
            "reason": "empty turn",
        },
        {
            "path": "p.jsonl",
            "location": "line 9",
            "row": 8,
            "field": None,
            "reason": "not valid JSON: Expecting value",
        },
    ]
    assert sorted(p.name for p in target.parent.iterdir()) == ["rejects.jsonl"]


def test_sha256_of_file_and_folder(tmp_path: Path) -> None:
    source = FIXTURES / "messages.jsonl"
    assert load_pool(source).sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    folder = make_kind("hf-disk", tmp_path)
    first = load_pool(folder).sha256
    assert load_pool(folder).sha256 == first
    (folder / "state.json").write_text(
        (folder / "state.json").read_text(encoding="utf-8") + " ", encoding="utf-8"
    )
    assert load_pool(folder).sha256 != first


def test_loaded_pool_repr_stays_short() -> None:
    pool = load_pool(FIXTURES / "messages.jsonl")
    assert isinstance(pool, LoadedPool)
    assert "Hello!" not in repr(pool)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.text(min_size=1).filter(str.strip), min_size=1, max_size=8),
    data=st.data(),
)
def test_jsonl_round_trip_property(
    texts: list[str], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Any text (line separators such as U+2028 included) survives load → write → load."""
    folder = tmp_path_factory.mktemp("prop")
    records = [
        {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t}]}
        for t in texts
    ]
    path = folder / "pool.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    pool = load_pool(path)
    rows = data.draw(st.lists(st.sampled_from(range(len(texts))), unique=True))
    out = write_selected(pool, rows, folder / "out")
    expected = [line for i, line in enumerate(path.read_bytes().split(b"\n")[:-1]) if i in rows]
    assert out.read_bytes() == b"".join(line + b"\n" for line in expected)
    if rows:
        assert [e.messages for e in load_pool(out).examples] == [
            pool.examples[i].messages for i in sorted(rows)
        ]


# ---------------------------------------------------------------------------------------------
# bad records: error mode raises at the first, skip mode collects every one

GOOD_A = {
    "id": "a",
    "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
}
GOOD_B = {
    "id": "b",
    "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "r2"}],
}


def turns(*pairs: tuple[str | None, Any]) -> str:
    return json.dumps({"messages": [{"role": role, "content": c} for role, c in pairs]})


BAD_LINES = {  # name → (line text, field, reason)
    "not an object": ("[1, 2]", None, "not a JSON object (got array)"),
    "malformed json": ('{"messages": [', None, "not valid JSON: Expecting value (column 15)"),
    "messages not a list": (
        '{"messages": "hi"}',
        "messages",
        "expected a list of turns, got string",
    ),
    "content is an int": (
        turns(("user", "q"), ("assistant", "a"), ("user", 5)),
        "messages[2].content",
        "expected a string or a list of text parts, got number",
    ),
    "turn not an object": (
        '{"messages": [{"role": "user", "content": "q"}, 7]}',
        "messages[1]",
        "expected an object with role and content, got number",
    ),
    "unknown role": (
        turns(("user", "q"), ("wizard", "a")),
        "messages[1].role",
        "unknown role 'wizard'",
    ),
    "empty turn": (
        turns(("system", "s"), ("user", " \n\t"), ("assistant", "a")),
        "messages[1].content",
        "empty turn",
    ),
    "no user turn": (turns(("system", "s"), ("assistant", "a")), "messages", "no user turn"),
    "no assistant turn": (turns(("user", "q")), "messages", "no assistant turn"),
    "missing content": (
        '{"messages": [{"role": "user"}]}',
        "messages[0].content",
        "missing required field",
    ),
    "missing messages": ('{"id": "x", "text": "hello"}', "messages", "missing required field"),
    "non-text part": (
        turns(
            ("user", [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": "x"}]),
            ("assistant", "a"),
        ),
        "messages[0].content[1]",
        "unsupported content part type 'image_url'",
    ),
    "duplicate id": (
        json.dumps({**GOOD_B, "id": "a"}),
        "id",
        "duplicate id 'a' (first seen at line 1)",
    ),
    "id of wrong type": (
        json.dumps({**GOOD_B, "id": [1]}),
        "id",
        "expected a string or an integer, got array",
    ),
    "role not a string": (
        turns(("user", "q"), (None, "a")),
        "messages[1].role",
        "expected a string, got null",
    ),
    "part not an object": (
        turns(("user", ["see"]), ("assistant", "a")),
        "messages[0].content[0]",
        "expected a content part object, got string",
    ),
    "plain turns of mixed types": (
        '{"messages": ["hi", 5]}',
        "messages[1]",
        "expected a string like the first turn, got number",
    ),
    "system of wrong type": (
        json.dumps({**GOOD_B, "id": "c", "system": ["s"]}),
        "system",
        "expected a string, got array",
    ),
}


def bad_pool(tmp_path: Path, line: str | bytes) -> Path:
    """Line 1 good, line 2 blank, line 3 bad, line 4 good."""
    bad = line if isinstance(line, bytes) else line.encode()
    path = tmp_path / "pool.jsonl"
    path.write_bytes(
        json.dumps(GOOD_A).encode() + b"\n\n" + bad + b"\n" + json.dumps(GOOD_B).encode() + b"\n"
    )
    return path


def check_bad(path: Path, field: str | None, reason: str, **kwargs: Any) -> None:
    with pytest.raises(InputError) as info:
        load_pool(path, **kwargs)
    where = f"{path}, line 3" + (f", field '{field}'" if field else "")
    assert str(info.value).startswith(f"{where}: {reason}")
    assert info.value.reject.field == field
    assert info.value.reject.row == 1
    pool = load_pool(path, on_invalid="skip", **kwargs)
    assert [e.id for e in pool.examples] == ["a", "b"]
    assert [e.row for e in pool.examples] == [0, 2]
    assert pool.n_records == 3
    [reject] = pool.rejects
    assert (reject.path, reject.location, reject.field, reject.row) == (
        str(path),
        "line 3",
        field,
        1,
    )
    assert reject.reason.startswith(reason)


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_bad_record(name: str, tmp_path: Path) -> None:
    line, field, reason = BAD_LINES[name]
    check_bad(bad_pool(tmp_path, line), field, reason)


def test_non_utf8_line(tmp_path: Path) -> None:
    path = bad_pool(tmp_path, b'{"messages": "caf\xe9"}')
    check_bad(path, None, "not valid UTF-8 (byte 17 of the line)")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing required field"),
        ('"high"', "expected a number, got string"),
        ("NaN", "expected a finite number, got nan"),
        ("true", "expected a number, got boolean"),
    ],
)
def test_bad_quality(value: str | None, reason: str, tmp_path: Path) -> None:
    good = [json.dumps({**r, "score": 0.5}) for r in (GOOD_A, GOOD_B)]
    bad = json.dumps({**GOOD_A, "id": "c"})
    if value is not None:
        bad = bad[:-1] + f', "score": {value}}}'
    path = tmp_path / "pool.jsonl"
    path.write_text(f"{good[0]}\n\n{bad}\n{good[1]}\n", encoding="utf-8")
    check_bad(path, "score", reason, quality_field="score")
    pool = load_pool(path, on_invalid="skip", quality_field="score")
    assert pool.quality is not None
    assert pool.quality.tolist() == [0.5, 0.5]  # aligned with the examples


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"instruction": "i", "input": ""}, "output", "missing required field (or 'response')"),
        ({"instruction": "i", "input": 3, "output": "o"}, "input", "expected a string, got number"),
        ({"instruction": "  ", "output": "o"}, "instruction", "empty turn"),
        (
            {"instruction": "i", "output": "o", "history": [["u"]]},
            "history[0]",
            "expected a [user, assistant] pair, got an array of 1",
        ),
        ({"instruction": "i", "output": "o", "system": 3}, "system", "expected a string"),
    ],
)
def test_bad_alpaca_record(record: dict[str, Any], field: str, reason: str, tmp_path: Path) -> None:
    records = [*strip_history(alpaca_records()), record]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_pool(path)
    assert str(info.value).startswith(f"{path}, row 3, field '{field}': {reason}")
    assert "format 'alpaca' (detected" in str(info.value)
    assert len(load_pool(path, on_invalid="skip").examples) == 3


def test_bad_self_instruct_and_mapped_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "si.jsonl", [{"instruction": "i", "instances": []}])
    with pytest.raises(InputError, match=r"line 1, field 'instances': expected a non-empty list"):
        load_pool(path, format="self-instruct")
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q"}])
    fields = FieldMap(prompt_field="question", response_field="answer")
    with pytest.raises(InputError, match=r"line 1, field 'answer': missing required field"):
        load_pool(path, fields=fields)
    fields = FieldMap(prompt_field="question", response_field="answer", id_field="key")
    with pytest.raises(InputError, match=r"line 1, field 'key': missing required field"):
        load_pool(FIXTURES / "mapped.jsonl", fields=fields)
    path = write_jsonl(tmp_path / "ids.jsonl", [{"uid": "", "prompt": "p", "completion": "c"}])
    with pytest.raises(InputError, match=r"line 1, field 'uid': empty id"):
        load_pool(path, fields=FieldMap(id_field="uid"))
    path = write_jsonl(tmp_path / "src.jsonl", [{"origin": 3, "prompt": "p", "completion": "c"}])
    with pytest.raises(InputError, match=r"line 1, field 'origin': expected a string, got number"):
        load_pool(path, fields=FieldMap(source_field="origin"))


def test_default_id_and_source_fall_back(tmp_path: Path) -> None:
    records = [
        {"id": None, "source": 7, "prompt": "p", "completion": "c"},
        {"id": "", "source": "", "prompt": "p", "completion": "c"},
        {"id": 0, "source": "web", "prompt": "p", "completion": "c"},
    ]
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", records))
    assert [(e.id, e.source) for e in pool.examples] == [
        ("row-0", None),
        ("row-1", None),
        ("0", "web"),
    ]


def test_byte_order_mark_and_ndjson(tmp_path: Path) -> None:
    array = tmp_path / "bom.json"
    array.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "alpaca.json").read_bytes())
    assert load_pool(array).file_kind == "json"
    lines = tmp_path / "bom.ndjson"
    lines.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "lima.jsonl").read_bytes())
    pool = load_pool(lines)
    assert (pool.file_kind, pool.format, len(pool.examples)) == ("jsonl", "lima", 2)


def test_bad_json_array_element_uses_row(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([*strip_history(alpaca_records()), "oops"]), encoding="utf-8")
    with pytest.raises(InputError, match=r"pool\.json, row 3: not a JSON object \(got string\)"):
        load_pool(path)


# ---------------------------------------------------------------------------------------------
# files that cannot be read as a whole: always an error, whatever on_invalid says


def test_invalid_json_array_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text('[\n  {"instruction": "i", "output": "o"},\n  {"instruction": \n', "utf-8")
    with pytest.raises(InputError) as info:
        load_pool(path, on_invalid="skip")
    assert str(info.value).startswith(f"{path}, line 4, column 1: not valid JSON: Expecting value")


def test_non_utf8_json_array_names_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_bytes(b'[{"instruction": "caf\xe9", "output": "o"}]')
    with pytest.raises(InputError, match=r"pool\.json, byte offset 21: not valid UTF-8"):
        load_pool(path, on_invalid="skip")
    gz = gzip_copy(path, tmp_path / "pool.json.gz")
    with pytest.raises(InputError, match=r"byte offset 21 \(after gunzip\)"):
        load_pool(gz)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n \n"),
        ("empty.json", b""),
        ("none.json", b"[]"),
        ("empty.csv", b""),
        ("header.csv", b"prompt,completion\n"),
    ],
)
def test_empty_file(name: str, content: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KmqError, match=rf"{name}: empty \(no records\)"):
        load_pool(path, on_invalid="skip")
    with pytest.raises(KmqError, match=rf"{name}: empty \(no records\)"):
        load_pool(path, format="prompt-completion")


def test_no_record_is_an_object(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text("1\n[2]\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1: not a JSON object") as info:
        load_pool(path, on_invalid="skip")
    assert "no record in the file could be read as an object" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pool.txt", b"{}", "unsupported file type '.txt'"),
        ("pool.json", b'"just a string"', "expected a JSON array of records or JSON Lines"),
        ("pool.jsonl.gz", b"\x1f\x8bnot really gzip", "cannot read the file"),
        ("pool.parquet", b"PAR1 nope", "cannot read the file"),
        ("pool.csv", b'prompt,completion\n"p"q,c\n', "line 2: not valid CSV"),
        ("open.csv", b'prompt,completion\n"open quote,x\n', "line 2: not valid CSV"),
    ],
)
def test_unreadable_file(name: str, content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KmqError, match=message) as info:
        load_pool(path, on_invalid="skip")
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress((FIXTURES / "messages.jsonl").read_bytes())
    path = tmp_path / "pool.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KmqError, match="cannot read the file"):
        load_pool(path)


def test_missing_path_and_plain_folder(tmp_path: Path) -> None:
    with pytest.raises(KmqError, match="no such file or directory") as info:
        load_pool(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)
    with pytest.raises(KmqError, match="no such file or directory"):
        load_pool("data/pool.jsonl")  # a relative path is never taken for a Hub name
    with pytest.raises(KmqError, match="not a Hugging Face dataset saved with save_to_disk"):
        load_pool(tmp_path)


def test_unrecognised_format_suggests_mapping_flags(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "a", "n": 3}])
    with pytest.raises(FormatError) as info:
        load_pool(path)
    message = str(info.value)
    assert message.startswith(f"{path}: could not recognise the record format")
    for name in FORMATS:
        assert f"  {name} " in message
    assert '"instruction" + "output" or "response"' in message
    assert "line 1) has: question (string), answer (string), n (number)" in message
    assert "--prompt-field question --response-field answer" in message
    path = write_jsonl(tmp_path / "dialog.jsonl", [{"dialog": [{"speaker": "a", "text": "b"}]}])
    with pytest.raises(FormatError, match="--messages-field dialog"):
        load_pool(path)
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"id": "x", "a": 1, "b": 2.5}])
    with pytest.raises(FormatError, match="--prompt-field FIELD --response-field FIELD"):
        load_pool(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "chatml"}, "unknown format 'chatml'; choose one of: messages, sharegpt"),
        ({"on_invalid": "ignore"}, "on_invalid must be 'error' or 'skip'"),
        ({"fields": FieldMap(prompt_field="q")}, "^prompt_field and response_field must be given"),
        (
            {"fields": FieldMap(messages_field="m", prompt_field="q", response_field="a")},
            "^messages_field cannot be combined with prompt_field/response_field",
        ),
        ({"format": "mapped"}, "^format 'mapped' needs prompt_field and response_field"),
        (
            {"format": "alpaca", "fields": FieldMap(messages_field="m")},
            "reads records as format 'mapped', not 'alpaca'; drop format or the mapping",
        ),
    ],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(KmqError, match=message):
        load_pool(FIXTURES / "messages.jsonl", **kwargs)


def test_field_map_is_empty() -> None:
    assert FieldMap().is_empty()
    assert not FieldMap(id_field="uid").is_empty()
    assert not FieldMap(id_field="uid").is_mapped()
    assert FieldMap(messages_field="dialog").is_mapped()


# ---------------------------------------------------------------------------------------------
# the shared real data: every file loads without user code


def shared_data() -> Path:
    env = os.environ.get("KMQ_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    root = shared_data()
    if not root.is_dir():
        pytest.skip(f"../shared/data not found (looked in {root}; set KMQ_SHARED_DATA)")
    return root / relative


GSM8K = FieldMap(prompt_field="question", response_field="answer")
RAW: dict[str, tuple[dict[str, Any], str, str, int]] = {  # file → (load kwargs, format, kind, n)
    "raw/lima/train.jsonl": ({}, "lima", "jsonl", 1030),
    "raw/alpaca/code_alpaca_2k.json": ({}, "alpaca", "json", 2017),
    "raw/alpaca/alpaca_gpt4_en_demo.json": ({}, "alpaca", "json", 999),
    "raw/gpteacher/codegen-instruct.json": ({}, "alpaca", "json", 4535),
    "raw/gsm8k/train.jsonl": ({"fields": GSM8K}, "mapped", "jsonl", 7473),
    "raw/t0/t0_train_50k.jsonl.gz": ({}, "prompt-completion", "jsonl", 55185),
    "raw/sharegpt/glaive_toolcall_en_demo.json": ({}, "sharegpt", "json", 300),
    "raw/self_instruct/seed_tasks.jsonl": ({}, "self-instruct", "jsonl", 175),
}
POOL_SOURCES = {
    "t0": 55185,
    "gsm8k": 7473,
    "gpteacher-codegen": 4535,
    "codealpaca": 2017,
    "lima": 1030,
    "alpaca-gpt4": 999,
}
SMALL_SOURCES = {**POOL_SOURCES, "t0": 2760}


def manifest_sha(relative: str) -> str:
    manifest = json.loads(shared_file("MANIFEST.json").read_text(encoding="utf-8"))
    return str(manifest["sha256"][relative])


@functools.cache
def load_raw(relative: str) -> LoadedPool:
    return load_pool(shared_file(relative), **RAW[relative][0])


@pytest.fixture(scope="module")
def mix() -> LoadedPool:
    return load_pool(shared_file("pools/mix.jsonl.gz"))


def test_every_raw_file_has_a_case() -> None:
    root = shared_file("raw")
    found = {p.relative_to(root.parent).as_posix() for p in root.rglob("*") if p.is_file()}
    assert found == set(RAW)


@pytest.mark.parametrize("relative", list(RAW))
def test_raw_file_loads(relative: str) -> None:
    _, fmt, kind, count = RAW[relative]
    pool = load_raw(relative)
    assert (pool.format, pool.file_kind) == (fmt, kind)
    assert (len(pool.examples), len(pool.rejects), pool.n_records) == (count, 0, count)
    assert pool.sha256 == manifest_sha(relative)
    assert all(e.prompt and e.text() for e in pool.examples)


def test_gsm8k_needs_the_mapping_flags() -> None:
    with pytest.raises(FormatError, match="--prompt-field question --response-field answer"):
        load_pool(shared_file("raw/gsm8k/train.jsonl"))


def test_mix_pool(mix: LoadedPool) -> None:
    assert (mix.format, mix.file_kind, mix.compressed) == ("messages", "jsonl", True)
    assert (len(mix.examples), len(mix.rejects), mix.n_records) == (71239, 0, 71239)
    assert Counter(e.source for e in mix.examples) == POOL_SOURCES
    assert mix.sha256 == manifest_sha("pools/mix.jsonl.gz")
    assert mix.examples[0].id == "t0-0"


def test_mix_small_pool() -> None:
    pool = load_pool(shared_file("pools/mix-small.jsonl.gz"))
    assert (len(pool.examples), len(pool.rejects)) == (18814, 0)
    assert Counter(e.source for e in pool.examples) == SMALL_SOURCES


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("raw/lima/train.jsonl", "lima"),
        ("raw/alpaca/code_alpaca_2k.json", "codealpaca"),
        ("raw/alpaca/alpaca_gpt4_en_demo.json", "alpaca-gpt4"),
        ("raw/gsm8k/train.jsonl", "gsm8k"),
        ("raw/t0/t0_train_50k.jsonl.gz", "t0"),
    ],
)
def test_raw_files_read_as_the_pool_has_them(relative: str, source: str, mix: LoadedPool) -> None:
    """The native formats give the same turns as the unified pool (gpteacher is left out: the
    pool stripped its inputs)."""
    pool = load_raw(relative)
    unified = {e.id: e.messages for e in mix.examples if e.source == source}
    assert [e.messages for e in pool.examples] == [
        unified[f"{source}-{i}"] for i in range(len(pool.examples))
    ]


def test_mix_pool_selection_round_trip(mix: LoadedPool, tmp_path: Path) -> None:
    rows = list(range(0, 71239, 997))
    out = write_selected(mix, rows, tmp_path)
    assert out.name == "selected.jsonl.gz"
    with gzip.open(mix.path, "rb") as fh:
        lines = fh.readlines()
    assert gzip.decompress(out.read_bytes()) == b"".join(lines[i] for i in rows)
