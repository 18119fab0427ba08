from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from kmq import progress
from kmq.cache import embed_cached, embedding_store
from kmq.rowcache import BLOCK_ROWS, CacheCorrupt, RowStore, keys_digest, row_keys
from tests.conftest import FakeEncoder

TEXTS = [f"text number {i}" for i in range(25)]


class CountingEncoder(FakeEncoder):
    """Records every text it encodes."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__(dim)
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        return super().encode(texts)


def embed(texts: Sequence[str], encoder: FakeEncoder, cache: Path, **kw: int) -> np.ndarray:
    vectors, _ = embed_cached(
        texts, encoder, view="user", cache_dir=cache, show_progress=False, **kw
    )
    return vectors


def pool_segment(cache: Path, texts: Sequence[str]) -> Path:
    store = embedding_store(FakeEncoder(), view="user", cache_dir=cache)
    return store.segment_dir / f"pool-{keys_digest(row_keys(texts))}"


def test_store_and_row_keys_change_with_encoder_view_window_dtype_and_text(tmp_path: Path) -> None:
    class Windowed(FakeEncoder):
        max_length = 128

    folders = {
        embedding_store(FakeEncoder(), view="user", cache_dir=tmp_path).folder,
        embedding_store(FakeEncoder(), view="full", cache_dir=tmp_path).folder,
        embedding_store(Windowed(), view="user", cache_dir=tmp_path).folder,
        embedding_store(FakeEncoder(), view="user", dtype="float16", cache_dir=tmp_path).folder,
    }
    renamed = FakeEncoder()
    renamed.name = "another-model"
    folders.add(embedding_store(renamed, view="user", cache_dir=tmp_path).folder)
    assert len(folders) == 5
    keys = row_keys(["ab", "c", "a", "bc", "ab"])
    assert keys.shape == (5, 2) and keys.dtype == np.uint64
    assert len({tuple(k) for k in keys.tolist()}) == 4 and (keys[0] == keys[4]).all()
    assert keys_digest(keys[:2]) != keys_digest(keys[2:4])  # ["ab","c"] vs ["a","bc"]


def test_reuse_is_memory_mapped_and_never_stale(tmp_path: Path) -> None:
    enc = CountingEncoder()
    first, hit = embed_cached(TEXTS, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert not hit and enc.seen == TEXTS
    again, hit = embed_cached(TEXTS, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert hit and enc.seen == TEXTS
    assert isinstance(again, np.memmap)
    assert np.array_equal(first, again)
    changed = [*TEXTS[:-1], "a different last row"]
    fresh, hit = embed_cached(changed, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert not hit
    assert enc.seen == [*TEXTS, "a different last row"]  # exactly the changed row re-embedded
    assert np.array_equal(fresh[:-1], first[:-1])
    assert np.allclose(fresh[-1], FakeEncoder().encode(["a different last row"])[0])


def test_subset_superset_and_append_embed_only_unseen_rows(tmp_path: Path) -> None:
    enc = CountingEncoder()
    embed(TEXTS, enc, tmp_path)
    enc.seen.clear()
    subset = TEXTS[3:17:2][::-1]
    assert np.allclose(embed(subset, enc, tmp_path), FakeEncoder().encode(subset))
    assert enc.seen == []  # a subset (reordered) embeds nothing
    extra = [f"appended {i}" for i in range(6)]
    appended = [*TEXTS, *extra]
    assert np.allclose(embed(appended, enc, tmp_path, shard_rows=4), FakeEncoder().encode(appended))
    assert enc.seen == extra  # an appended pool embeds only the new rows
    enc.seen.clear()
    superset = [TEXTS[0], "new in the middle", *subset]
    embed(superset, enc, tmp_path)
    assert enc.seen == ["new in the middle"]


class CrashingEncoder(CountingEncoder):
    """Fails on its n-th call, like a run killed in the middle of embedding."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.calls + 1 == self.fail_on:
            raise RuntimeError("killed")
        return super().encode(texts)


def test_interrupted_embedding_keeps_every_finished_shard(tmp_path: Path) -> None:
    crashing = CrashingEncoder(fail_on=3)
    with pytest.raises(RuntimeError, match="killed"):
        embed(TEXTS, crashing, tmp_path, shard_rows=10)
    assert crashing.seen == TEXTS[:20]
    killed_writer = pool_segment(tmp_path, TEXTS).parent / ".tmp-killed"
    killed_writer.mkdir()  # what a writer killed mid-segment leaves
    resumed = CrashingEncoder(fail_on=0)
    out = embed(TEXTS, resumed, tmp_path, shard_rows=10)
    assert resumed.seen == TEXTS[20:]  # only the missing shard was encoded
    assert np.allclose(out, FakeEncoder().encode(TEXTS))
    segments = sorted(p.name.split("-")[0] for p in pool_segment(tmp_path, TEXTS).parent.iterdir())
    assert segments == ["pool"]  # shards folded into the pool's segment, the temp folder gone


def corrupt_values(segment: Path, change: str) -> None:
    values = np.load(segment / "values.npy")
    path = segment / "values.npy"
    if change == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif change == "empty":
        path.write_bytes(b"")
    elif change == "permute":
        np.save(path, values[::-1])
    elif change == "dimension":
        np.save(path, values[:, :10])
    elif change == "garble":
        with path.open("r+b") as fh:
            fh.seek(-64, os.SEEK_END)
            fh.write(bytes(64))
    elif change == "header":
        with path.open("r+b") as fh:
            fh.write(b"GARBAGE!")
    elif change == "meta":
        (segment / "meta.json").write_text('{"rows": 5}')


@pytest.mark.parametrize(
    "change", ["truncate", "empty", "permute", "dimension", "garble", "header", "meta"]
)
def test_a_corrupt_cache_file_is_named_with_how_to_clear_it(tmp_path: Path, change: str) -> None:
    embed(TEXTS, FakeEncoder(), tmp_path)
    segment = pool_segment(tmp_path, TEXTS)
    corrupt_values(segment, change)
    with pytest.raises(CacheCorrupt, match="delete") as info:
        embed(TEXTS, FakeEncoder(), tmp_path)
    assert str(segment) in str(info.value)
    with pytest.raises(CacheCorrupt):  # a subset reads the same rows from it
        embed(TEXTS[:5], FakeEncoder(), tmp_path)


def test_corruption_is_found_in_the_blocks_a_subset_reads(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(BLOCK_ROWS + 10)]
    embed(texts, FakeEncoder(dim=2), tmp_path)
    segment = pool_segment(tmp_path, texts)
    with (segment / "values.npy").open("r+b") as fh:
        fh.seek(-8, os.SEEK_END)  # the last row, in the second block
        fh.write(bytes(8))
    assert embed(texts[:100], FakeEncoder(dim=2), tmp_path).shape == (100, 2)  # first block: fine
    with pytest.raises(CacheCorrupt, match=f"rows {BLOCK_ROWS}\\.\\."):
        embed(texts[-3:], FakeEncoder(dim=2), tmp_path)


def test_an_encoder_that_changed_dimension_is_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    embed(TEXTS, FakeEncoder(dim=16), tmp_path)
    with pytest.raises(Exception, match=r"shape \(8,\) where the cache .* holds \(16,\)"):
        embed([*TEXTS, "new row"], FakeEncoder(dim=8), tmp_path)
    parts = [p for p in pool_segment(tmp_path, TEXTS).parent.iterdir() if "part" in p.name]
    assert parts == []


WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from kmq.cache import embed_cached
from tests.conftest import FakeEncoder

class Slow(FakeEncoder):
    def encode(self, texts):
        time.sleep(0.05)
        return super().encode(texts)

texts = [f"row {i}" for i in range(600)]
vectors, hit = embed_cached(texts, Slow(), view="user", cache_dir=Path(sys.argv[1]),
                            shard_rows=50, show_progress=False)
np.save(sys.argv[2], np.asarray(vectors))
"""


def test_two_processes_filling_one_cache_with_the_same_pool(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{root / 'src'}{os.pathsep}{root}")
    cache = tmp_path / "cache"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(cache), str(tmp_path / f"{n}.npy")],
            env=env,
            cwd=root,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    texts = [f"row {i}" for i in range(600)]
    expected = FakeEncoder().encode(texts)
    for n in range(2):
        assert np.allclose(np.load(tmp_path / f"{n}.npy"), expected)
    enc = CountingEncoder()
    again, hit = embed_cached(texts, enc, view="user", cache_dir=cache, show_progress=False)
    assert hit and enc.seen == [] and np.allclose(again, expected)
    leftovers = [p.name for p in pool_segment(cache, texts).parent.iterdir()]
    assert not [name for name in leftovers if name.startswith(".tmp")]


def test_the_bar_moves_per_batch_not_per_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates: list[int] = []

    class Bar:
        def __init__(self, **kw: object) -> None:
            updates.clear()

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int) -> None:
            updates.append(n)

    class Batched(FakeEncoder):
        def encode(self, texts: Sequence[str]) -> np.ndarray:
            for start in range(0, len(texts), 4):
                progress.advance(min(4, len(texts) - start))
            return super().encode(texts)

    monkeypatch.setattr("kmq.rowcache.tqdm", Bar)
    embed_cached(TEXTS, Batched(), view="user", cache_dir=tmp_path, shard_rows=10)
    assert updates == [4, 4, 2, 4, 4, 2, 4, 1]


def test_settings_file_that_disagrees_is_reported(tmp_path: Path) -> None:
    embed(TEXTS, FakeEncoder(), tmp_path)
    store = embedding_store(FakeEncoder(), view="user", cache_dir=tmp_path)
    (store.folder / "settings.json").write_text(json.dumps({"encoder": "other"}))
    with pytest.raises(CacheCorrupt, match="records other settings"):
        embed([*TEXTS, "one more"], FakeEncoder(), tmp_path)


def test_compaction_merges_parts_and_keeps_every_row(tmp_path: Path) -> None:
    store = RowStore(tmp_path / "store", {"kind": "test"})
    keys = row_keys(f"r{i}" for i in range(30))

    def compute(shards: list[np.ndarray]):  # type: ignore[no-untyped-def]
        for number, rows in enumerate(shards):
            yield number, rows.astype(np.float64)

    for stop in (10, 20, 30):
        store.compute(keys[:stop], compute, shape=(), dtype=np.dtype(np.float64), shard_rows=3)
    names = [seg.name.split("-")[0] for seg in store.segments()]
    assert len(names) > 2
    store.compact()
    assert [seg.name.split("-")[0] for seg in store.segments()] == ["merged"]
    located = store.locate(keys)
    out = np.empty(30)
    located.gather(np.arange(30), out)
    assert (located.segment == 0).all()
    assert out.tolist() == list(range(30))


def test_an_earlier_versions_whole_list_entry_is_taken_over(tmp_path: Path) -> None:
    from hashlib import sha256

    from kmq.cache import CHUNKING, content_hash

    vectors = FakeEncoder().encode(TEXTS)
    parts = [FakeEncoder.name, "user", "max_length=None", CHUNKING, content_hash(TEXTS)]
    key = sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    (tmp_path / "embeddings").mkdir()
    np.save(tmp_path / "embeddings" / f"{key}.npy", vectors)
    (tmp_path / "embeddings" / f"{key}.json").write_text("{}")
    enc = CountingEncoder()
    got, hit = embed_cached(TEXTS, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert hit and enc.seen == [] and np.array_equal(got, vectors)
    embed(TEXTS[:3], enc, tmp_path)
    assert enc.seen == []  # its rows now serve other pools too


def test_keys_whose_first_word_collides_are_told_apart(tmp_path: Path) -> None:
    store = RowStore(tmp_path / "store", {"kind": "test"})
    stored = np.array([[5, 1], [5, 2], [5, 3], [7, 1]], dtype=np.uint64)

    def compute(shards: list[np.ndarray]):  # type: ignore[no-untyped-def]
        for number, rows in enumerate(shards):
            yield number, rows.astype(np.float64)

    store.compute(stored, compute, shape=(), dtype=np.dtype(np.float64), shard_rows=10)
    asked = np.array([[5, 3], [5, 2], [5, 4], [7, 1], [6, 1]], dtype=np.uint64)
    located = store.locate(asked)
    assert located.row.tolist()[:2] == [2, 1] and located.row[3] == 3
    assert located.segment.tolist() == [0, 0, -1, 0, -1]
