"""Several inputs read as one pool (kmq.inputs) and per-source shares (--mix, kmq.mixing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmq.cli import main
from kmq.errors import KmqError, ParameterError
from kmq.formats import load_pool
from kmq.mixing import select_mixed, source_budgets
from kmq.outputs import Manifest
from kmq.pipeline import select, select_file
from kmq.selectors import get_selector
from kmq.shares import check_shares, parse_share
from tests.conftest import make_blobs
from tests.test_pipeline import config


def alpaca_rows(n: int, topic: str) -> list[dict[str, str]]:
    return [
        {"instruction": f"{topic} question {i}", "input": "", "output": f"{topic} answer {i}"}
        for i in range(n)
    ]


def chat_rows(n: int, topic: str, source: str | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(n):
        row: dict[str, object] = {
            "messages": [
                {"role": "user", "content": f"{topic} prompt {i}"},
                {"role": "assistant", "content": f"{topic} reply {i}"},
            ]
        }
        if source is not None:
            row["source"] = source
        rows.append(row)
    return rows


def write_inputs(folder: Path) -> list[str]:
    """Three files in three layouts: Alpaca JSONL, messages Parquet with its own sources, and
    a JSON array; none has ids, so their row-N ids collide."""
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "alpaca.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(30, "math")))
    second = folder / "chats.parquet"
    rows = chat_rows(20, "code", source="oasst") + chat_rows(10, "poem")
    pq.write_table(pa.Table.from_pylist(rows), second)
    third = folder / "dolly.json"
    third.write_text(json.dumps(alpaca_rows(40, "trivia")))
    return [str(first), str(second), str(third)]


def test_several_files_are_one_pool(tmp_path: Path) -> None:
    files = write_inputs(tmp_path / "in")
    pool = load_pool(files)
    assert len(pool.examples) == 100 and pool.n_records == 100
    sources = [ex.source for ex in pool.examples]
    assert sources == ["alpaca"] * 30 + ["oasst"] * 20 + ["chats"] * 10 + ["dolly"] * 40
    ids = [ex.id for ex in pool.examples]
    assert len(set(ids)) == 100
    assert ids[0] == "alpaca:row-0" and ids[30] == "chats:row-0"  # row-0 is in every file
    assert ids[99] == "row-39"  # only dolly has 40 rows: its row-39 is unique, kept as is
    assert [ex.row for ex in pool.examples] == list(range(100))
    assert [part["format"] for part in pool.parts or []] == ["alpaca", "messages", "alpaca"]


def test_ids_unique_across_files_are_kept(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rows = alpaca_rows(3, "x")
    a.write_text("".join(json.dumps(r | {"id": f"a{i}"}) + "\n" for i, r in enumerate(rows)))
    b.write_text("".join(json.dumps(r | {"id": f"b{i}"}) + "\n" for i, r in enumerate(rows)))
    ids = [ex.id for ex in load_pool([str(a), str(b)]).examples]
    assert ids == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_a_folder_of_json_arrays_is_several_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "arrays"
    folder.mkdir()
    (folder / "b.json").write_text(json.dumps(alpaca_rows(4, "b")))
    (folder / "a.json").write_text(json.dumps(alpaca_rows(3, "a")))
    pool = load_pool(str(folder))
    assert [ex.source for ex in pool.examples] == ["a"] * 3 + ["b"] * 4


def test_inputs_with_the_same_name_are_refused(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "data.json").write_text(json.dumps(alpaca_rows(2, sub)))
    with pytest.raises(KmqError, match="same name 'data'"):
        load_pool([str(tmp_path / "x" / "data.json"), str(tmp_path / "y" / "data.json")])


def test_parse_and_check_shares() -> None:
    assert parse_share("alpaca=0.25") == ("alpaca", 0.25)
    assert parse_share("a=b=0.5") == ("a=b", 0.5)
    with pytest.raises(KmqError, match="SOURCE=SHARE"):
        parse_share("alpaca")
    with pytest.raises(ParameterError, match=r"sum to 0\.9, not 1"):
        check_shares({"a": 0.5, "b": 0.4})
    with pytest.raises(ParameterError, match="must be in"):
        check_shares({"a": 1.5, "b": -0.5})


def test_source_budgets_round_to_the_budget_and_refuse_infeasible_shares() -> None:
    mix = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    assert sum(source_budgets(mix, 10, {"a": 9, "b": 9, "c": 9}).values()) == 10
    with pytest.raises(KmqError, match="asks for 5 of the 10 rows, but source 'b' has 3"):
        source_budgets({"a": 0.5, "b": 0.5}, 10, {"a": 9, "b": 3})


def mixed_pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x, _ = make_blobs(300, 6, seed=seed)
    labels = np.argmin(((x[:, None, :] - x[None, :6, :]) ** 2).sum(-1), axis=1)
    sources = [("a", "b", "c")[i % 3] if i % 10 else "d" for i in range(300)]
    return x, labels, sources


@given(
    budget=st.integers(3, 60),
    share=st.sampled_from([0.2, 0.5, 0.7]),
    method=st.sampled_from(["kmq", "km-random", "random"]),
    seed=st.integers(0, 3),
)
def test_mix_meets_the_shares_exactly(budget: int, share: float, method: str, seed: int) -> None:
    x, labels, sources = mixed_pool(seed)
    mix = {"a": share, "b": round(1 - share, 10)}
    quality = np.random.default_rng(seed).random(len(x))
    result, entry, _ = select_mixed(
        get_selector(method), x, budget, mix, sources, labels=labels, quality=quality, seed=seed
    )
    picked = [sources[i] for i in result.indices]
    assert len(result) == budget == len(set(result.indices.tolist()))
    assert entry["budgets"] == {s: picked.count(s) for s in mix}
    assert abs(picked.count("a") - share * budget) <= 1
    assert entry["unmixed_sources"] == ["c", "d"]


def test_mix_keeps_kmqs_balance_inside_each_source() -> None:
    x, labels, sources = mixed_pool()
    mix = {"a": 0.5, "b": 0.5}
    result = select(x, 60, labels=labels, mix=mix, sources=sources, seed=1)
    for source in mix:
        rows = [i for i in result.indices if sources[i] == source]
        counts = np.bincount(labels[rows], minlength=6)
        available = np.bincount(labels[[s == source for s in sources]], minlength=6)
        alone = select(x, 30, labels=labels, exclude=[s != source for s in sources], seed=1)
        # the same balanced quotas as kMQ on that source's rows alone
        assert counts.tolist() == np.bincount(labels[alone.indices], minlength=6).tolist()
        assert (counts <= available).all()


def test_mix_with_a_token_budget_splits_the_tokens() -> None:
    x, labels, sources = mixed_pool()
    tokens = np.random.default_rng(0).integers(10, 90, size=len(x))
    mix = {"a": 0.25, "b": 0.75}
    result = select(x, budget_tokens=3_000, tokens=tokens, labels=labels, mix=mix, sources=sources)
    by_source = {s: int(tokens[[i for i in result.indices if sources[i] == s]].sum()) for s in mix}
    assert by_source["a"] <= 750 and by_source["b"] <= 2_250
    assert sum(by_source.values()) == int(tokens[result.indices].sum()) <= 3_000


def test_mix_errors_name_the_sources() -> None:
    x, labels, sources = mixed_pool()
    with pytest.raises(KmqError, match="'zzz', not a source of the pool; its sources: a, b, c, d"):
        select(x, 10, labels=labels, mix={"a": 0.5, "zzz": 0.5}, sources=sources)
    with pytest.raises(KmqError, match="source 'd' has 30 rows left"):
        select(x, 100, labels=labels, mix={"a": 0.5, "d": 0.5}, sources=sources)


def test_cli_several_inputs_with_a_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["select", *files, "--out", str(out), "--budget", "20", "--method", "random"]
    argv += ["--mix", "alpaca=0.5", "dolly=0.25", "oasst=0.25", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "mix (rows split by source first): alpaca 0.5 (10 rows)" in capsys.readouterr().out
    manifest = Manifest.read(out)
    assert manifest.sources is not None
    assert manifest.sources["selected"] == {"alpaca": 10, "dolly": 5, "oasst": 5}
    assert manifest.sources["mix"]["unmixed_sources"] == ["chats"]
    assert [Path(f["path"]).name for f in manifest.input["files"]] == [Path(f).name for f in files]
    written = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(written) == 20  # native: each record as read, as JSON lines
    assert sum("instruction" in r for r in written) == 15
    table = pq.read_table(out / "selection.parquet").to_pylist()
    assert {r["source"] for r in table} == {"alpaca", "dolly", "oasst"}
    # replay reads the recorded files again and picks the same rows
    again = tmp_path / "again"
    assert main(["select", "--config", str(out), "--out", str(again), "--no-progress"]) == 0
    assert (again / "selected.jsonl").read_text() == (out / "selected.jsonl").read_text()


def test_cli_mix_errors(tmp_path: Path) -> None:
    files = write_inputs(tmp_path / "in")
    argv = ["select", *files, "--out", str(tmp_path / "o"), "--budget", "20", "--method", "random"]
    assert main([*argv, "--mix", "alpaca=0.5", "dolly=0.4"]) == 2
    assert main([*argv, "--mix", "alpaca=0.5", "nope=0.5"]) == 2
    assert main([*argv, "--mix", "chats=0.9", "dolly=0.1"]) == 2


def test_select_file_with_a_mix_and_clusters(tmp_path: Path) -> None:
    files = write_inputs(tmp_path / "in")
    run = select_file(
        config(tmp_path, files[0], input=files, budget=20, k=4, mix={"alpaca": 0.5, "dolly": 0.5})
    )
    picked = [run.pool.examples[i].source for i in run.result.indices]
    assert picked.count("alpaca") == 10 and picked.count("dolly") == 10
    clusters = run.manifest.clusters
    assert clusters is not None and sum(clusters["quota"]) == 20


def test_a_save_to_disk_folder_is_not_a_folder_of_json_arrays(tmp_path: Path) -> None:
    from kmq.inputs import is_json_folder

    for marker in ("dataset_dict.json", "state.json", "dataset_info.json"):
        folder = tmp_path / marker
        folder.mkdir()
        (folder / marker).write_text("{}")
        assert not is_json_folder(folder)
