"""kmq select --config manifest.json: the recorded selection again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from kmq.cli import main
from kmq.errors import KmqError
from kmq.outputs import Manifest
from kmq.pipeline import select_file
from kmq.replay import check_same_input, config_from_manifest, read_manifest
from tests.conftest import FakeEncoder
from tests.test_pipeline import config, write_pool


def picked_ids(out: Path) -> list[str]:
    return pq.read_table(out / "selection.parquet", columns=["id"]).column("id").to_pylist()


def test_replayed_config_makes_the_same_picks(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    first = select_file(config(tmp_path, pool, quality_field="quality", seed=3))
    manifest = read_manifest(tmp_path / "out")
    again = config_from_manifest(manifest, out=str(tmp_path / "again"))
    assert (again.input, again.seed, again.quality_field) == (str(pool.resolve()), 3, "quality")
    assert again.encoder == "fake-encoder/v1"  # a name: the fake is handed in again below
    run = select_file(replace(again, encoder=FakeEncoder()))
    assert run.rows == first.rows
    assert picked_ids(tmp_path / "again") == picked_ids(tmp_path / "out")
    assert check_same_input(manifest, run.manifest)


def test_cli_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["select", str(pool), "--method", "random", "--budget", "7", "--seed", "5"]
    assert main([*args, "--out", str(a), "--no-progress"]) == 0
    assert main(["select", "--config", str(a / "manifest.json"), "--out", str(b)]) == 0
    assert picked_ids(b) == picked_ids(a) and len(picked_ids(a)) == 7
    capsys.readouterr()
    assert main(["select", "--config", str(a), "--out", str(b), "--seed", "1", "--k", "4"]) == 2
    assert "--config replays the recorded settings; drop --k, --seed" in capsys.readouterr().err
    assert main(["select", "--out", str(b)]) == 2
    assert "needs an input file (or --config MANIFEST" in capsys.readouterr().err


def recorded(**sections: Any) -> Manifest:
    return Manifest.from_dict({"tool": "kmq", "config": {}} | sections)


def test_changed_input_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = recorded(input={"sha256": "a" * 64})
    assert not check_same_input(manifest, recorded(input={"sha256": "b" * 64}))
    assert "the input differs from the recorded one" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{", "not valid JSON"),
        ('{"tool": "other"}', "not a manifest.json written by kmq select"),
    ],
)
def test_bad_manifests(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KmqError, match=message):
        read_manifest(path)


def test_what_cannot_be_replayed() -> None:
    newer = recorded(version="9", config={"input": "x", "out": "o", "warp": 1})
    with pytest.raises(KmqError, match=r"written by kmq 9 and has settings .*: warp"):
        config_from_manifest(newer, out="n")
    memory = recorded(config={"input": "<records: list, 3 rows>"}, input={"path": "<records>"})
    with pytest.raises(KmqError, match="records in memory"):
        config_from_manifest(memory, out="n")
    assert config_from_manifest(memory, out="n", input="p.jsonl").input == "p.jsonl"
