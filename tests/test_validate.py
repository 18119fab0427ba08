"""Row checks: one pass counts every invalid row by reason; leading replies are repaired."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from kmq.cli import main
from kmq.errors import InputError, Reject
from kmq.examples import Message
from kmq.formats import ExampleStream, load_pool
from kmq.pipeline import select_file
from kmq.validate import leading_replies, reason_counts, reason_kind
from tests.test_pipeline import config


def turn(who: str, text: str) -> dict[str, str]:
    return {"from": who, "value": text}


GOOD = [turn("human", "What is 2 + 2?"), turn("gpt", "4")]
# The three kinds of trouble in real ShareGPT files, among good rows.
ROWS: list[dict[str, Any]] = [
    {"id": "ok-0", "conversations": GOOD},
    {"id": "empty", "conversations": [turn("human", "  "), turn("gpt", "Hello!")]},
    {"id": "lead", "conversations": [turn("gpt", "Hi, how can I help?"), *GOOD]},
    {"id": "ok-1", "conversations": [turn("system", "Be brief."), *GOOD]},
    {"id": "role", "conversations": [turn("human", "Hi"), turn("bot", "Hello")]},
    {"id": "only-reply", "conversations": [turn("gpt", "Hi"), turn("human", "Bye")]},
    {"id": "role-2", "conversations": [turn("narrator", "Once"), *GOOD]},
    {"id": "lead-sys", "conversations": [turn("system", "S"), turn("gpt", "G"), *GOOD]},
]


def write_rows(path: Path, rows: list[dict[str, Any]] = ROWS) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_error_counts_every_invalid_row_and_says_how_to_go_on(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chat.jsonl")
    with pytest.raises(InputError) as info:
        load_pool(path)
    message = str(info.value)
    first = f"{path}, line 2, field 'conversations[0].value': empty turn"
    assert message.splitlines()[0] == first
    assert info.value.reject.row == 1
    assert "4 of 8 records are invalid (unknown role: 2, empty turn: 1, no assistant turn: 1)" in (
        message
    )
    assert "records are read as format 'sharegpt' (detected" in message
    assert "rerun with --on-invalid skip" in message and "rejects.jsonl" in message


def test_one_invalid_row_is_singular(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chat.jsonl", ROWS[:2])
    with pytest.raises(InputError, match=r"1 of 2 records is invalid \(empty turn: 1\)"):
        load_pool(path)


def test_skip_keeps_valid_and_repaired_rows(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chat.jsonl")
    pool = load_pool(path, on_invalid="skip")
    assert [e.id for e in pool.examples] == ["ok-0", "lead", "ok-1", "lead-sys"]
    reasons = {r.location: (r.field, r.reason) for r in pool.rejects}
    assert reasons["line 2"] == ("conversations[0].value", "empty turn")
    assert reasons["line 5"][0] == "conversations[1].from"
    assert reasons["line 5"][1].startswith("unknown role 'bot' (known: system, developer, user")
    assert reasons["line 6"] == ("conversations", "no assistant turn")
    assert reasons["line 7"][0] == "conversations[0].from"
    lead, lead_sys = pool.examples[1], pool.examples[3]
    assert lead.messages == (Message("user", "What is 2 + 2?"), Message("assistant", "4"))
    assert [m.role for m in lead_sys.messages] == ["system", "user", "assistant"]
    assert lead.fields == ROWS[2]  # the record as read stays whole
    assert [(r.location, r.row, r.field) for r in pool.repairs] == [
        ("line 3", 2, "conversations"),
        ("line 8", 7, "conversations"),
    ]
    assert pool.repairs[0].action == (
        "dropped 1 turn(s) before the first user turn (assistant) at conversations[0].value"
    )
    assert pool.repairs[1].action.endswith("(assistant) at conversations[1].value")


def test_stream_raises_after_reading_every_row(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chat.jsonl.gz")
    stream = ExampleStream(path)
    seen: list[str] = []
    with pytest.raises(InputError, match="4 of 8 records are invalid"):
        seen.extend(example.id for example, _ in stream)
    assert seen == ["ok-0", "lead", "ok-1", "lead-sys"]
    skipping = ExampleStream(path, on_invalid="skip")
    assert [example.id for example, _ in skipping] == seen
    assert len(skipping.rejects) == 4 and len(skipping.repairs) == 2


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("unknown role 'bot' (known: system, user)", "unknown role"),
        ("duplicate id 'x-1' (first seen at line 3)", "duplicate id"),
        ("not valid JSON: Expecting value (column 3)", "not valid JSON"),
        ("expected a string, got number", "expected a string, got number"),
        ("empty turn", "empty turn"),
    ],
)
def test_reason_kind_drops_particulars(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_reason_counts_most_common_first() -> None:
    rejects = [Reject("p", f"line {i}", None, r) for i, r in enumerate(["b", "a", "b", "c", "a"])]
    assert list(reason_counts(rejects).items()) == [("a", 2), ("b", 2), ("c", 1)]


@pytest.mark.parametrize(
    ("roles", "dropped"),
    [
        (["user", "assistant"], []),
        (["assistant", "user", "assistant"], [0]),
        (["system", "assistant", "tool", "user", "assistant"], [1, 2]),
        (["assistant", "assistant"], []),  # no user turn: rejected for that, not repaired
    ],
)
def test_leading_replies(roles: list[str], dropped: list[int]) -> None:
    messages = [Message(role, "x") for role in roles]  # type: ignore[arg-type]
    assert leading_replies(messages) == dropped


def test_select_records_reasons_and_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rows(tmp_path / "chat.jsonl")
    run = select_file(config(tmp_path, path, budget=2, k=2, on_invalid="skip"))
    checks = run.manifest.checks
    assert checks == {
        "rejected_by_reason": {"unknown role": 2, "empty turn": 1, "no assistant turn": 1},
        "repaired": 2,
        "repairs": "repairs.jsonl",
    }
    lines = (tmp_path / "out" / "repairs.jsonl").read_text().splitlines()
    assert [json.loads(line)["location"] for line in lines] == [
        "line 3",
        "line 8",
    ]
    code = main(["inspect", str(tmp_path / "out")])
    shown = capsys.readouterr().out
    assert code == 0
    assert "rejected by reason: unknown role 2, empty turn 1, no assistant turn 1" in shown
    assert "repaired 2 conversations (repairs.jsonl)" in shown
