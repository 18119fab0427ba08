"""The output folder's manifest: one typed record, written and read in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmq.errors import KmqError
from kmq.outputs import MANIFEST, Manifest
from kmq.pipeline import select_file
from tests.test_pipeline import config, write_pool


def test_the_manifest_file_is_the_runs_manifest(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(config(tmp_path, pool))
    on_disk = json.loads((run.out / MANIFEST).read_text(encoding="utf-8"))
    assert on_disk == run.manifest.to_dict()
    assert list(on_disk)[:3] == ["tool", "version", "python"]
    assert list(on_disk)[-3:] == ["outputs", "checks", "statistics"]  # no "streaming" here
    read = Manifest.read(run.out)
    assert read == run.manifest
    assert read.k == 6 == on_disk["clusters"]["k"]
    assert read.timings_s == on_disk["timings_s"] and "embed" in read.timings_s


def test_random_selection_has_no_k(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(config(tmp_path, pool, method="random", k="auto"))
    assert run.manifest.k is None and run.manifest.clusters is None


def test_older_and_newer_manifests_read(tmp_path: Path) -> None:
    minimal = {"tool": "kmq", "version": "0.0.1", "config": {}, "seed": 1, "future": [1, 2]}
    manifest = Manifest.from_dict(minimal)
    assert manifest.checks is None and manifest.notes == [] and manifest.timings_s == {}
    assert manifest.extra == {"future": [1, 2]}
    assert manifest.to_dict()["future"] == [1, 2]
    path = tmp_path / "m.json"
    path.write_text('{"tool": "other"}')
    with pytest.raises(KmqError, match=r"m\.json: not a manifest\.json written by kmq select"):
        Manifest.read(path)


def test_a_run_gives_ids_records_and_arrow(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(config(tmp_path, pool))
    table = run.table()
    assert table.column("id").to_pylist() == run.ids == [r["id"] for r in run.records()]
    assert table.column("index").to_pylist() == run.rows
    assert len(run.ids) == run.manifest.counts["selected"] == 12
