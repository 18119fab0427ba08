from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kmq.config import resolve_budget
from kmq.errors import KmqError
from kmq.pipeline import SelectConfig, select, select_file
from tests.conftest import FakeEncoder, make_blobs

SOURCES = ["alpha"] * 40 + ["beta"] * 15 + ["gamma"] * 5


def write_pool(path: Path, n: int = 60, bad_line: bool = False) -> list[bytes]:
    """A small messages-format JSONL pool; returns its lines as bytes."""
    lines = []
    for i in range(n):
        record = {
            "id": f"ex-{i}",
            "source": SOURCES[i % len(SOURCES)],
            "quality": (i % 7) / 7,
            "messages": [
                {"role": "user", "content": f"question {i} about {SOURCES[i % len(SOURCES)]} ✓"},
                {"role": "assistant", "content": f"answer {i}"},
            ],
        }
        lines.append(json.dumps(record, ensure_ascii=False).encode())
    if bad_line:
        lines.insert(10, b'{"id": "broken", "messages": [')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def config(tmp_path: Path, pool: Path, **kw: object) -> SelectConfig:
    defaults: dict[str, object] = {
        "input": str(pool),
        "out": str(tmp_path / "out"),
        "budget": 12,
        "k": 6,
        "encoder": FakeEncoder(),
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
    }
    return SelectConfig(**(defaults | kw))  # type: ignore[arg-type]


def test_select_file_writes_rows_unchanged_table_and_manifest(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    lines = write_pool(pool)
    run = select_file(config(tmp_path, pool, quality_field="quality"))
    out = tmp_path / "out"
    picked = (out / "selected.jsonl").read_bytes().splitlines()
    table = pq.read_table(out / "selection.parquet").to_pylist()
    assert len(picked) == len(table) == 12
    rows = sorted(r["index"] for r in table)
    assert picked == [lines[i] for i in rows]  # the input's own bytes, in input order
    assert [r["pick_order"] for r in table] == list(range(12))
    assert all(r["reason"].startswith("cluster ") for r in table)
    assert all(r["quality"] == pytest.approx((r["index"] % 7) / 7) for r in table)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] | {} == {
        "records": 60,
        "valid": 60,
        "rejected": 0,
        "excluded": 0,
        "excluded_not_in_pool": 0,
        "deduplicated": 0,
        "exact_duplicates": 0,
        "decontaminated": None,
        "budget": 12,
        "selected": 12,
        "shortfall": 0,
    }
    assert manifest["clusters"]["k"] == 6
    assert sum(manifest["clusters"]["selected"]) == 12
    assert manifest["clusters"]["selected"] == manifest["clusters"]["quota"]
    assert manifest["sources"]["pool"] == {"alpha": 40, "beta": 15, "gamma": 5}
    assert sum(manifest["sources"]["selected"].values()) == 12
    assert manifest["config"]["encoder"] == "fake-encoder/v1"
    assert manifest["embedding"]["encoder"] == "fake-encoder/v1"
    assert manifest["input"]["sha256"] == run.pool.sha256
    assert set(manifest["timings_s"]) == {"load", "quality", "embed", "cluster", "select", "write"}


def test_same_seed_same_selection_and_cache_reuse(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    enc = FakeEncoder()
    a = select_file(config(tmp_path, pool, encoder=enc, out=str(tmp_path / "a"), k="auto"))
    calls = enc.calls
    b = select_file(config(tmp_path, pool, encoder=enc, out=str(tmp_path / "b"), k="auto"))
    assert enc.calls == calls  # embeddings came from the cache
    assert b.manifest.embedding["cache_hit"]
    assert np.array_equal(a.result.indices, b.result.indices)
    assert a.manifest.clusters["silhouette"] == b.manifest.clusters["silhouette"]
    c = select_file(config(tmp_path, pool, encoder=enc, out=str(tmp_path / "c"), k="auto", seed=1))
    assert not np.array_equal(np.sort(a.result.indices), np.sort(c.result.indices))


def test_exclude_file_and_fraction_budget(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    excluded = [f"ex-{i}" for i in range(0, 60, 2)] + ["not-in-pool"]
    (tmp_path / "exclude.txt").write_text("\n".join(excluded) + "\n")
    run = select_file(config(tmp_path, pool, budget=0.25, exclude=str(tmp_path / "exclude.txt")))
    ids = [run.pool.examples[i].id for i in run.result.indices]
    assert len(ids) == 15  # 25% of 60
    assert not set(ids) & set(excluded)
    assert run.manifest.counts["excluded"] == 30
    assert run.manifest.counts["excluded_not_in_pool"] == 1
    # a previous selection table works as an exclude file too
    again = select_file(
        config(
            tmp_path,
            pool,
            out=str(tmp_path / "again"),
            exclude=str(tmp_path / "out" / "selection.parquet"),
        )
    )
    assert not set(run.result.indices.tolist()) & set(again.result.indices.tolist())


def test_skip_invalid_rows_records_them(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, bad_line=True)
    with pytest.raises(KmqError, match=r"pool\.jsonl, line 11"):
        select_file(config(tmp_path, pool))
    run = select_file(config(tmp_path, pool, on_invalid="skip"))
    assert run.manifest.counts["rejected"] == 1
    rejects = [
        json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    ]
    assert len(rejects) == 1 and rejects[0]["location"] == "line 11"


@pytest.mark.parametrize("method", ["random", "k-center", "km-closest", "km-random"])
def test_every_method_runs_end_to_end(tmp_path: Path, method: str) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(config(tmp_path, pool, method=method, budget=10, k="auto"))
    assert len(run.result) == 10
    assert (run.manifest.clusters is None) == (method in {"random", "k-center"})


def test_equal_allocation_reports_its_shortfall(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(config(tmp_path, pool, allocation="equal", budget=5, k=6))
    assert run.manifest.counts["shortfall"] == 5  # k = 6 > b = 5: the official code picks nothing


def test_select_api_on_arrays() -> None:
    x, _ = make_blobs(400, 8, spread=0.05)
    result = select(x, 0.1, method="kmq", k="auto", k_grid=[4, 8, 16], seed=0)
    assert len(result) == 40
    assert result.silhouette is not None and max(result.silhouette, key=result.silhouette.get) == 8
    assert any("km-random" in n for n in result.notes)


def test_resolve_budget() -> None:
    assert resolve_budget(0.05, 18814) == 941
    assert resolve_budget(940, 18814) == 940
    assert resolve_budget(1e-9, 10) == 1
    for bad in (0, -3, 1.5, 0.0, True):
        with pytest.raises(KmqError):
            resolve_budget(bad, 100)


def test_plain_random_needs_no_embeddings(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    enc = FakeEncoder()
    run = select_file(config(tmp_path, pool, method="random", k="auto", encoder=enc))
    assert enc.calls == 0
    assert run.manifest.embedding is None
    assert len(run.result) == 12


def test_quality_scorer_feeds_kmq_and_the_manifest(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(config(tmp_path, pool, quality="length"))
    info = run.manifest.quality
    assert info["scorer"] == "length" and info["column"] == "length_score"
    assert info["missing"] == 0 and not info["cache_hit"]
    lengths = [len(run.pool.examples[i].response) for i in run.result.indices]
    assert run.result.scores.tolist() == lengths
    table = pq.read_table(tmp_path / "out" / "selection.parquet").to_pylist()
    assert [r["quality"] for r in table] == lengths
    again = select_file(config(tmp_path, pool, quality="length", out=str(tmp_path / "again")))
    assert again.manifest.quality["cache_hit"]
    with pytest.raises(KmqError, match="not both"):
        select_file(config(tmp_path, pool, quality="length", quality_field="quality"))


@pytest.mark.parametrize("method", ["deita", "qdit", "facility-location"])
def test_peer_baselines_run_behind_the_same_interface(tmp_path: Path, method: str) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    run = select_file(
        config(tmp_path, pool, method=method, quality="length", k="auto", deita_threshold=0.5)
    )
    assert run.result.method == method
    assert len(run.result) + run.manifest.counts["shortfall"] == 12
    assert len(set(run.result.indices.tolist())) == len(run.result)


def test_dedup_removes_planted_twins_before_selection(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    lines = write_pool(pool)
    twins = [json.loads(line) for line in lines[:5]]
    for t in twins:
        t["id"] += "-copy"
    with pool.open("a") as fh:
        fh.writelines(json.dumps(t) + "\n" for t in twins)
    run = select_file(config(tmp_path, pool, dedup=0.01, budget=60, method="random"))
    records = [
        json.loads(line) for line in (tmp_path / "out" / "dedup.jsonl").read_text().splitlines()
    ]
    pairs = {tuple(sorted((r["id"], r["twin_id"]))) for r in records}
    assert pairs == {tuple(sorted((f"ex-{i}", f"ex-{i}-copy"))) for i in range(5)}
    assert all(r["similarity"] > 0.99 for r in records)
    assert run.manifest.counts["deduplicated"] == 5
    picked = {run.pool.examples[i].id for i in run.result.indices}
    assert not picked & {r["id"] for r in records}
    assert len(picked) == 60


def test_sample_selects_from_a_seeded_subset_and_writes_the_input_rows(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    lines = write_pool(pool)
    run = select_file(config(tmp_path, pool, sample=30, budget=0.2, quality_field="quality"))
    out = tmp_path / "out"
    counts = run.manifest.counts
    assert counts["valid"] == 30 and counts["not_sampled"] == 30
    assert run.manifest.config["sample"] == 30
    table = pq.read_table(out / "selection.parquet").to_pylist()
    assert len(table) == 6  # the budget fraction is of the sample
    picked = (out / "selected.jsonl").read_bytes().splitlines()
    assert picked == [lines[i] for i in sorted(r["index"] for r in table)]  # input rows, unchanged
    sampled = {ex.row for ex in run.pool.examples}  # type: ignore[union-attr]
    assert len(sampled) == 30 and {r["index"] for r in table} <= sampled
    again = select_file(config(tmp_path, pool, sample=30, out=str(tmp_path / "b"), budget=0.2))
    assert {ex.row for ex in again.pool.examples} == sampled  # type: ignore[union-attr]
    other = select_file(config(tmp_path, pool, sample=30, out=str(tmp_path / "c"), seed=1))
    assert {ex.row for ex in other.pool.examples} != sampled  # type: ignore[union-attr]
    whole = select_file(config(tmp_path, pool, sample=500, out=str(tmp_path / "d")))
    assert whole.manifest.counts["valid"] == 60  # a sample larger than the pool is the pool


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"sample": 0}, "^sample must be a positive integer"),
        ({"sample": 5, "streaming": True}, "^sample applies to in-memory runs only"),
    ],
)
def test_bad_sample_settings_are_rejected(
    tmp_path: Path, kw: dict[str, object], message: str
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    with pytest.raises(KmqError, match=message):
        select_file(config(tmp_path, pool, **kw))


def test_random_with_dedup_embeds_and_clusters_for_semdedup(tmp_path: Path) -> None:
    """One rule (SelectConfig.needs_clusters / needs_embeddings) decides the stages, so SemDeDup
    under the random method clusters real vectors."""
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    encoder = FakeEncoder()
    run = select_file(config(tmp_path, pool, method="random", k="auto", dedup=0.5, encoder=encoder))
    assert encoder.calls > 0
    assert run.manifest.embedding is not None and run.manifest.k is not None
    assert run.manifest.outputs["dedup"] == "dedup.jsonl"
    assert config(tmp_path, pool, method="random", k="auto").needs_embeddings() is False
