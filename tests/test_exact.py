"""Exact de-duplication: on by default, normalised text, every removed row with its kept twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmq.exact import KEY_DTYPE, exact_duplicates, find_duplicates, normalize_text, text_key
from kmq.examples import Example, Message
from kmq.pipeline import select_file
from tests.test_pipeline import config


def chat(user: str, answer: str, row: int = 0) -> Example:
    return Example(f"r{row}", (Message("user", user), Message("assistant", answer)), row)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("  Hello\n\tWorld  ", "hello world"),
        ("ＡＢＣ", "abc"),  # full-width letters, NFKC
        ("Straße", "strasse"),  # case folding
        ("", ""),
    ],
)
def test_normalize_text(text: str, normal: str) -> None:
    assert normalize_text(text) == normal


def test_keys_ignore_case_and_spacing_but_not_roles_or_answers() -> None:
    base = text_key(chat("What is 2+2?", "4"))
    assert text_key(chat("  what IS 2+2? ", "4")) == base
    assert text_key(chat("What is 2+2?", "four")) != base
    swapped = Example("s", (Message("system", "What is 2+2?"), Message("assistant", "4")), 0)
    assert text_key(swapped) != base
    assert len(base) == KEY_DTYPE.itemsize


def test_first_copy_is_kept() -> None:
    rows = [chat("a", "1", 0), chat("b", "2", 1), chat("A", "1", 2), chat("b ", "2", 3)]
    rows.append(chat("a", "1", 4))
    found = exact_duplicates(rows)
    assert found.removed.tolist() == [2, 3, 4]
    assert found.twin.tolist() == [0, 1, 0]
    assert found.mask(5).tolist() == [False, False, True, True, True]


@given(st.lists(st.integers(0, 5), max_size=40))
def test_find_duplicates_property(values: list[int]) -> None:
    keys = np.array([bytes([v]) * 16 for v in values], dtype=KEY_DTYPE)
    found = find_duplicates(keys)
    kept = sorted(set(range(len(values))) - set(found.removed.tolist()))
    assert [values[i] for i in kept] == list(dict.fromkeys(values))  # one per value, first
    assert all(keys[t] == keys[r] and t < r for r, t in zip(found.removed, found.twin, strict=True))
    assert all(t in kept for t in found.twin.tolist())


def half_duplicated(path: Path) -> list[dict[str, object]]:
    """40 distinct rows, then 20 copies of the first 20 in another case and spacing."""
    records = []
    for i in range(60):
        j = i if i < 40 else i - 40
        user = f"question {j} about topic {j % 5}"
        records.append(
            {
                "id": f"ex-{i}",
                "messages": [
                    {"role": "user", "content": user if i < 40 else f"  {user.upper()} "},
                    {"role": "assistant", "content": f"answer {j}"},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@pytest.mark.parametrize("streaming", [False, True])
def test_select_removes_duplicates_by_default(tmp_path: Path, streaming: bool) -> None:
    pool = tmp_path / "pool.jsonl"
    half_duplicated(pool)
    run = select_file(config(tmp_path, pool, budget=30, k=4, streaming=streaming))
    out = tmp_path / "out"
    assert run.manifest.counts["exact_duplicates"] == 20
    assert run.manifest.outputs["duplicates"] == "duplicates.jsonl"
    picked = pq.read_table(out / "selection.parquet").column("index").to_pylist()
    assert len(picked) == 30 and max(picked) < 40  # no copy picked
    lines = [json.loads(line) for line in (out / "duplicates.jsonl").read_text().splitlines()]
    assert lines[0] == {"index": 40, "id": "ex-40", "twin_index": 0, "twin_id": "ex-0"}
    assert [line["twin_index"] for line in lines] == list(range(20))


def test_keep_duplicates_turns_it_off(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    half_duplicated(pool)
    run = select_file(config(tmp_path, pool, budget=50, k=4, keep_duplicates=True))
    assert run.manifest.counts["exact_duplicates"] is None
    assert run.manifest.outputs["duplicates"] is None
    assert not (tmp_path / "out" / "duplicates.jsonl").exists()
    picked = pq.read_table(tmp_path / "out" / "selection.parquet").column("index").to_pylist()
    assert max(picked) >= 40  # 50 of 60 rows: copies are picked too


def test_excluded_counts_only_the_exclude_file(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    half_duplicated(pool)
    ids = tmp_path / "ids.txt"
    ids.write_text("ex-1\nex-41\n")  # ex-41 is also a duplicate of ex-1
    run = select_file(config(tmp_path, pool, budget=10, k=4, exclude=str(ids)))
    assert run.manifest.counts["excluded"] == 2
    assert run.manifest.counts["exact_duplicates"] == 20
