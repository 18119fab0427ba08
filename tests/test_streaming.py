"""The streaming path (``kmq select --streaming``) against the in-memory one, on sharded pools."""

from __future__ import annotations

import gzip
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmq import streaming
from kmq.chunks import read_rows, spans, take_rows
from kmq.cli import build_parser
from kmq.clustering import assign, fit_centroids, kmeans, normalize
from kmq.config import SelectConfig
from kmq.errors import InputError, KmqError
from kmq.formats import ExampleStream, load_pool
from kmq.pipeline import select_file
from tests.conftest import FakeEncoder, make_blobs

SOURCES = ("alpha", "beta", "gamma", None)


def records(n: int, *, ids: bool = True) -> list[dict[str, object]]:
    """Messages-format rows with a source (sometimes none) and a quality score."""
    rows = []
    for i in range(n):
        record: dict[str, object] = {
            "messages": [
                {"role": "user", "content": f"question {i} on topic {i % 13} ✓"},
                {"role": "assistant", "content": f"answer {i}"},
            ],
            "quality": round((i * 37 % 101) / 100, 2),
        }
        if ids:
            record["id"] = f"ex-{i}"
        if SOURCES[i % 4] is not None:
            record["source"] = SOURCES[i % 4]
        rows.append(record)
    return rows


def lines_of(rows: Sequence[dict[str, object]]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows]


def write_jsonl(path: Path, lines: Sequence[bytes]) -> Path:
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def write_shards(folder: Path, lines: Sequence[bytes], cuts: Sequence[int]) -> Path:
    """``lines`` split at ``cuts`` into part-0.jsonl, part-1.jsonl.gz, part-2.jsonl, ..."""
    folder.mkdir()
    bounds = [0, *cuts, len(lines)]
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        write_jsonl(folder / f"part-{i}.jsonl{'.gz' if i % 2 else ''}", lines[a:b])
    return folder


def config(tmp_path: Path, pool: Path, out: str = "out", **kw: object) -> SelectConfig:
    defaults: dict[str, object] = {
        "input": str(pool),
        "out": str(tmp_path / out),
        "budget": 24,
        "k": 6,
        "encoder": FakeEncoder(),
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
        "quality_field": "quality",
    }
    return SelectConfig(**(defaults | kw))  # type: ignore[arg-type]


def picked_lines(out: Path) -> list[bytes]:
    lines = []
    for shard in sorted(out.glob("selected-*")):
        data = shard.read_bytes()
        lines += (gzip.decompress(data) if shard.suffix == ".gz" else data).splitlines(True)
    return lines


@pytest.mark.parametrize(
    ("method", "k"),
    [("kmq", 6), ("kmq", "auto"), ("km-random", 6), ("random", "auto"), ("k-center", "auto")],
)
def test_streaming_equals_in_memory_byte_for_byte(
    tmp_path: Path, method: str, k: int | str
) -> None:
    lines = lines_of(records(300))
    lines.insert(40, b'{"id": "broken", "messages": [\n')
    pool = write_jsonl(tmp_path / "pool.jsonl", lines)
    (tmp_path / "exclude.txt").write_text("ex-3\nex-5\nex-8\nnot-in-pool\n")
    options = {
        "method": method,
        "k": k,
        "k_grid": [4, 8, 16],
        "on_invalid": "skip",
        "exclude": str(tmp_path / "exclude.txt"),
    }
    memory = select_file(config(tmp_path, pool, "memory", **options))
    streamed = select_file(
        config(tmp_path, pool, "streamed", streaming=True, embedding_dtype="float32", **options)
    )
    table = (tmp_path / "memory" / "selection.parquet").read_bytes()
    assert (tmp_path / "streamed" / "selection.parquet").read_bytes() == table
    assert np.array_equal(memory.result.indices, streamed.result.indices)
    assert picked_lines(tmp_path / "streamed") == (
        tmp_path / "memory" / "selected.jsonl"
    ).read_bytes().splitlines(True)
    a, b = memory.manifest.to_dict(), streamed.manifest.to_dict()
    for key in ("counts", "sources", "input", "quality", "notes", "method"):
        assert a[key] == b[key], key
    if a["clusters"] is not None:
        assert a["clusters"] | {"inertia": 0} == b["clusters"] | {"inertia": 0}
        assert b["clusters"]["inertia"] == pytest.approx(a["clusters"]["inertia"], rel=1e-9)
    assert b["outputs"]["rows"] == ["selected-00000.jsonl"]
    assert b["streaming"]["kmeans_sample"] == (None if a["clusters"] is None else 300)
    rejects = (tmp_path / "streamed" / "rejects.jsonl").read_text()
    assert rejects == (tmp_path / "memory" / "rejects.jsonl").read_text()


def test_a_folder_of_shards_selects_as_the_same_rows_in_one_file(tmp_path: Path) -> None:
    lines = lines_of(records(250, ids=False))  # ids default to row-<index>: global across shards
    whole = write_jsonl(tmp_path / "pool.jsonl", lines)
    folder = write_shards(tmp_path / "shards", lines, [90, 91, 200])
    one = select_file(config(tmp_path, whole, "one", streaming=True, k="auto", k_grid=[4, 8]))
    run = select_file(config(tmp_path, folder, "many", k="auto", k_grid=[4, 8]))  # automatic
    assert run.manifest.streaming["input_files"] == 4
    table = pq.read_table(tmp_path / "many" / "selection.parquet")
    assert table.equals(pq.read_table(tmp_path / "one" / "selection.parquet"))
    assert picked_lines(tmp_path / "many") == picked_lines(tmp_path / "one")
    assert set(table.column("id").to_pylist()) <= {f"row-{i}" for i in range(250)}
    assert one.manifest.embedding["cache_hit"] is False
    assert run.manifest.embedding["cache_hit"] is True  # same texts, same cache entry
    assert run.manifest.input["kind"] == "jsonl"


def test_same_seed_same_selection_with_float16_and_a_sample(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", lines_of(records(400)))
    options = {"streaming": True, "kmeans_sample": 150, "k": 8}
    a = select_file(config(tmp_path, pool, "a", **options))
    b = select_file(config(tmp_path, pool, "b", **options))
    c = select_file(config(tmp_path, pool, "c", seed=1, **options))
    table = (tmp_path / "a" / "selection.parquet").read_bytes()
    assert (tmp_path / "b" / "selection.parquet").read_bytes() == table
    assert not np.array_equal(np.sort(a.result.indices), np.sort(c.result.indices))
    assert a.manifest.embedding["dtype"] == "float16"
    assert a.manifest.streaming["kmeans_sample"] == 150
    assert b.manifest.embedding["cache_hit"]
    cache = tmp_path / "cache" / "embeddings"
    stored = [np.load(p, mmap_mode="r") for p in cache.glob("*/segments/*/values.npy")]
    assert [s.dtype for s in stored] == [np.float16]
    clusters = np.load(tmp_path / "a" / "clusters.npz")
    assert clusters["labels"].dtype == np.int32 and clusters["distances"].dtype == np.float32
    assert len(clusters["labels"]) == 400


def test_output_shards_split_the_picks_in_input_order(tmp_path: Path) -> None:
    lines = lines_of(records(200))
    pool = write_jsonl(tmp_path / "pool.jsonl.gz", lines)
    run = select_file(config(tmp_path, pool, streaming=True, budget=25, output_shard_rows=10))
    out = tmp_path / "out"
    names = ["selected-00000.jsonl.gz", "selected-00001.jsonl.gz", "selected-00002.jsonl.gz"]
    assert run.manifest.outputs["rows"] == names
    sizes = [len(gzip.decompress((out / n).read_bytes()).splitlines()) for n in names]
    assert sizes == [10, 10, 5]
    rows = sorted(pq.read_table(out / "selection.parquet").column("index").to_pylist())
    assert picked_lines(out) == [lines[i] for i in rows]
    select_file(config(tmp_path, pool, streaming=True, budget=25, output_shard_rows=100))
    assert sorted(p.name for p in out.glob("selected-*")) == names[:1]  # stale shards removed


def test_parquet_shards_keep_their_schema(tmp_path: Path) -> None:
    rows = records(120)
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, (a, b) in enumerate([(0, 50), (50, 120)]):
        pq.write_table(pa.Table.from_pylist(rows[a:b]), folder / f"part-{i}.parquet")
    run = select_file(config(tmp_path, folder, budget=30, output_shard_rows=16))
    out = tmp_path / "out"
    assert run.manifest.outputs["rows"] == ["selected-00000.parquet", "selected-00001.parquet"]
    picked = pa.concat_tables(pq.read_table(out / n) for n in run.manifest.outputs["rows"])
    assert picked.schema == pq.read_table(folder / "part-0.parquet").schema
    index = sorted(pq.read_table(out / "selection.parquet").column("index").to_pylist())
    assert picked.to_pylist() == pa.Table.from_pylist(rows).take(index).to_pylist()


def test_bad_rows_in_a_shard_are_named_by_shard_and_line(tmp_path: Path) -> None:
    lines = lines_of(records(60))
    lines[47] = b'{"id": "ex-3", "messages": [{"role": "user", "content": "dup"}, ' + (
        b'{"role": "assistant", "content": "id"}]}\n'
    )
    lines[52] = b"not json\n"
    folder = write_shards(tmp_path / "shards", lines, [30])
    with pytest.raises(InputError, match=r"part-1\.jsonl\.gz, line 18.*duplicate id 'ex-3'"):
        select_file(config(tmp_path, folder))
    run = select_file(config(tmp_path, folder, on_invalid="skip"))
    rejects = [
        json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().split("\n")[:-1]
    ]
    assert [(r["location"], r["row"]) for r in rejects] == [
        ("part-1.jsonl.gz, line 18", 47),
        ("part-1.jsonl.gz, line 23", 52),
    ]
    assert "part-0.jsonl, line 4" in rejects[0]["reason"]  # where the id was first seen
    assert all(r["path"] == str(folder) for r in rejects)
    counts = run.manifest.counts
    assert (counts["records"], counts["valid"], counts["rejected"]) == (60, 58, 2)


def test_the_stream_reads_what_load_pool_reads(tmp_path: Path) -> None:
    lines = lines_of(records(80))
    lines[10] = b'{"id": "x", "messages": []}\n'
    path = write_jsonl(tmp_path / "pool.jsonl", lines)
    loaded = load_pool(path, on_invalid="skip", quality_field="quality")
    stream = ExampleStream(path, on_invalid="skip", quality_field="quality")
    got = list(stream)
    assert [ex for ex, _ in got] == loaded.examples
    assert np.array_equal([q for _, q in got], loaded.quality)
    assert (stream.format, stream.rejects, stream.n_records) == (
        loaded.format,
        loaded.rejects,
        loaded.n_records,
    )
    assert stream.digest() == loaded.sha256
    assert list(stream) == got  # iterating again reads the input again


class CrashingEncoder(FakeEncoder):
    """Fails on its n-th call, like a run killed in the middle of embedding."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.rows = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.calls + 1 == self.fail_on:
            raise RuntimeError("killed")
        self.rows += len(texts)
        return super().encode(texts)


def test_an_interrupted_embedding_resumes_at_the_missing_shard(tmp_path: Path) -> None:
    n = 9000  # three cache shards of 4096 rows
    lines = [json.dumps({"prompt": f"p{i}", "completion": "c"}).encode() + b"\n" for i in range(n)]
    pool = write_jsonl(tmp_path / "pool.jsonl", lines)
    options = {"streaming": True, "quality_field": None, "k": 4, "budget": 10}
    with pytest.raises(RuntimeError, match="killed"):
        select_file(config(tmp_path, pool, encoder=CrashingEncoder(fail_on=3), **options))
    resumed = CrashingEncoder(fail_on=0)
    run = select_file(config(tmp_path, pool, "resumed", encoder=resumed, **options))
    assert resumed.rows == n - 2 * 4096  # only the missing shard was encoded
    assert not run.manifest.embedding["cache_hit"]
    clean = select_file(config(tmp_path / "clean", pool, **options))
    assert np.array_equal(run.result.indices, clean.result.indices)


def test_km_closest_picks_the_rows_nearest_their_centroid(tmp_path: Path) -> None:
    rows = records(240)
    pool = write_jsonl(tmp_path / "pool.jsonl", lines_of(rows))
    run = select_file(
        config(tmp_path, pool, method="km-closest", streaming=True, embedding_dtype="float32")
    )
    clusters = np.load(tmp_path / "out" / "clusters.npz")
    labels, centroids = clusters["labels"], clusters["centroids"]
    x = normalize(FakeEncoder().encode([r["messages"][0]["content"] for r in rows]))  # type: ignore[index]
    cosine = (x * normalize(centroids)[labels]).sum(1)
    assert np.allclose(run.result.scores, cosine[run.result.indices], atol=1e-5)
    for j, quota in enumerate(run.result.quotas):
        members = np.flatnonzero(labels == j)
        best = members[np.argsort(-cosine[members], kind="stable")][:quota]
        picked = run.result.indices[labels[run.result.indices] == j]
        assert set(picked) == set(best)


def test_what_streaming_refuses_it_refuses_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", lines_of(records(40)))
    with pytest.raises(
        KmqError, match=r"^quality 'length' scores rows held in memory, which streaming"
    ):
        select_file(config(tmp_path, pool, streaming=True, quality="length", quality_field=None))
    with pytest.raises(
        KmqError, match=r"^dedup compares vectors held in memory and does not run with streaming"
    ):
        select_file(config(tmp_path, pool, streaming=True, dedup=0.05))
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", 30)
    with pytest.raises(KmqError, match="up to 30 rows, and this one has 40"):
        select_file(config(tmp_path, pool, streaming=True, method="qdit"))
    with pytest.raises(
        KmqError, match=r"^kmeans_sample, output_shard_rows apply to streaming runs only"
    ):
        select_file(config(tmp_path, pool, kmeans_sample=10, output_shard_rows=5))
    with pytest.raises(KmqError, match="k=6 needs at least that many rows"):
        select_file(config(tmp_path, pool, streaming=True, kmeans_sample=5))
    with pytest.raises(KmqError, match=r"^kmeans_sample must be a positive integer"):
        select_file(config(tmp_path, pool, streaming=True, kmeans_sample=0))


def test_inputs_streaming_cannot_read_are_named(tmp_path: Path) -> None:
    (tmp_path / "pool.csv").write_text("prompt,response\na,b\n")
    with pytest.raises(KmqError, match=r"streaming reads JSONL or Parquet files.*not csv"):
        ExampleStream(tmp_path / "pool.csv")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "a.jsonl", lines_of(records(3)))
    pq.write_table(pa.Table.from_pylist(records(3)), mixed / "b.parquet")
    with pytest.raises(KmqError, match="mixes JSONL and Parquet shards"):
        ExampleStream(mixed)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here")
    with pytest.raises(KmqError, match="neither shards to read"):
        select_file(config(tmp_path, empty))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "state.json").write_text("{}")
    with pytest.raises(KmqError, match="save_to_disk folder; streaming reads"):
        ExampleStream(hf)


def test_chunked_reads_and_assignment_match_the_whole_array(tmp_path: Path) -> None:
    x, _ = make_blobs(10_000, 12, dim=8)
    np.save(tmp_path / "x.npy", x.astype(np.float16))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert np.array_equal(read_rows(mapped, 4000, 9000), mapped[4000:9000].astype(np.float32))
    rows = np.array([0, 5, 4095, 4096, 9999])
    assert np.array_equal(take_rows(mapped, rows, chunk_rows=4096), mapped[rows].astype(np.float32))
    fitted = kmeans(x, 12, seed=3)
    assert np.array_equal(fit_centroids(x, 12, seed=3), fitted.centroids_)
    labels, distances = assign(x, fitted.centroids_, chunk_rows=4096)
    assert np.array_equal(labels, fitted.labels_)
    assert math.isclose(float(distances.astype(np.float64).sum()), fitted.inertia_, rel_tol=1e-12)


def test_a_short_last_chunk_joins_the_one_before_it() -> None:
    """faiss searches < 20 queries without BLAS, which rounds differently: a chunked search
    must never end with such a chunk to match one search over all rows."""
    assert spans(8200, 4096) == [(0, 4096), (4096, 8200)]
    assert spans(8212, 4096) == [(0, 4096), (4096, 8192), (8192, 8212)]
    assert spans(10, 4096) == [(0, 10)]
    x, _ = make_blobs(4096 + 5, 12, dim=64)  # at 16 dims both paths happen to agree
    centroids = fit_centroids(x, 12, seed=0)
    index = faiss.IndexFlatL2(64)
    index.add(centroids)
    whole, _ = index.search(normalize(x), 1)
    _, distances = assign(x, centroids, chunk_rows=4096)
    assert np.array_equal(distances, whole[:, 0])


def test_select_help_documents_streaming(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["select", "pool", "--out", "o", "--streaming"])
    assert args.streaming and args.kmeans_sample is None and args.embedding_dtype is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "--help"])
    text = capsys.readouterr().out
    for flag in ("--streaming", "--kmeans-sample", "--embedding-dtype", "--output-shard-rows"):
        assert flag in text


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kmq", "km-random"])
def test_mix_small_streams_to_the_in_memory_selection(
    tmp_path: Path, shared_data: Path, method: str
) -> None:
    """Real MiniLM vectors of mix-small (18,814 rows), k chosen by silhouette, a quality column.

    Embeds into the default cache ($KMQ_CACHE_DIR or ~/.cache/kmq): about an hour cold on two
    CPU cores, seconds warm. The two paths share the float32 cache entry.
    """
    pool = tmp_path / "mix-small-q.jsonl.gz"
    with (
        gzip.open(shared_data / "pools" / "mix-small.jsonl.gz", "rt", encoding="utf-8") as src,
        gzip.open(pool, "wt", encoding="utf-8") as dst,
    ):
        for line in src:
            record = json.loads(line)
            record["quality"] = math.log1p(len(record["messages"][-1]["content"]))
            dst.write(json.dumps(record, ensure_ascii=False) + "\n")
    options = {"method": method, "k": "auto", "encoder": "minilm", "cache_dir": None}
    memory = select_file(config(tmp_path, pool, "memory", budget=0.05, **options))
    streamed = select_file(
        config(
            tmp_path,
            pool,
            "streamed",
            budget=0.05,
            streaming=True,
            embedding_dtype="float32",
            **options,
        )
    )
    assert streamed.manifest.streaming["kmeans_sample"] == 18_814
    table = (tmp_path / "memory" / "selection.parquet").read_bytes()
    assert (tmp_path / "streamed" / "selection.parquet").read_bytes() == table
    assert memory.manifest.clusters["k"] == streamed.manifest.clusters["k"]
