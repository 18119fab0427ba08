"""The embedding cache: vectors found per row, by the hash of each row's text and the encoder's
settings; memory-mapped; resumable.

A store (see :mod:`kmq.rowcache`) holds the vectors of one encoder (its ``name``: model and
weights), text view, window, chunking rule and storage dtype; inside it a row's vector is found
by the sha256 of its text. A subset, a superset or an appended pool so embeds only the rows
never embedded before, and a changed row re-embeds that row only. A pool's vectors, in its
order, are kept as one segment named by the digest of its row keys: a rerun on the same pool
memory-maps it at once (after checking it against its checksums). Missing rows are embedded in
shards that are saved as they finish: an interrupted run keeps them.

Vectors cached by earlier versions (one ``<key>.npy`` per whole list of texts, keyed by a
:class:`ContentHash` of the texts) are taken over once as the pool's segment when the caller
passes that hash, so an existing cache is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kmq.cachedir import default_cache_dir
from kmq.encoders import DEFAULT_ENCODER, Encoder, get_encoder
from kmq.rowcache import Compute, RowStore, keys_digest, row_keys

SHARD_ROWS = 4096
CHUNKING = "token-windows/mean-by-tokens/v2"


class ContentHash:
    """sha256 over texts in order, each prefixed by its length (the key of the whole-list
    cache of earlier versions; fed one text at a time)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self._digest.update(len(data).to_bytes(8, "little"))
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def content_hash(texts: Sequence[str]) -> str:
    digest = ContentHash()
    for text in texts:
        digest.update(text)
    return digest.hexdigest()


def legacy_entry(
    root: Path, text_hash: str, encoder: Encoder, *, view: str, dtype: str
) -> Path | None:
    """The whole-list ``.npy`` an earlier version cached for the texts with ``text_hash``."""
    max_length = getattr(encoder, "max_length", None)
    parts = [encoder.name, view, f"max_length={max_length}", CHUNKING, text_hash]
    if np.dtype(dtype) != np.float32:
        parts.append(f"dtype={dtype}")
    key = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    path = root / "embeddings" / f"{key}.npy"
    return path if path.is_file() and path.with_suffix(".json").is_file() else None


def store_key(settings: dict[str, Any]) -> str:
    """The folder name of the store for ``settings``."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def embedding_store(
    encoder: Encoder, *, view: str, dtype: str = "float32", cache_dir: Path | None = None
) -> RowStore:
    """The store of ``encoder``'s vectors of texts in ``view``, kept as ``dtype``; every engine
    that embeds uses it, so they share the cache."""
    settings = {
        "kind": "embeddings",
        "encoder": encoder.name,
        "view": view,
        "max_length": getattr(encoder, "max_length", None),
        "chunking": CHUNKING,
        "dtype": str(np.dtype(dtype)),
    }
    root = cache_dir or default_cache_dir()
    return RowStore(root / "embeddings" / store_key(settings), settings)


def encode_shards(texts: Callable[[np.ndarray], list[str]], encoder: Encoder) -> Compute:
    """A :data:`~kmq.rowcache.Compute` that encodes each shard's texts in one ``encode`` call,
    in order (or hands them all to the encoder's ``encode_batches``, which may run them
    concurrently); ``texts(rows)`` hands out the texts of the (increasing) row indices."""

    def compute(shards: list[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        concurrent = getattr(encoder, "encode_batches", None)
        if concurrent is not None:
            yield from concurrent(texts(rows) for rows in shards)
            return
        for number, rows in enumerate(shards):
            yield number, np.asarray(encoder.encode(texts(rows)), dtype=np.float32)

    return compute


def embed_rows(
    keys: np.ndarray,
    compute: Compute,
    encoder: Encoder,
    *,
    view: str,
    dtype: str = "float32",
    cache_dir: Path | None = None,
    shard_rows: int | None = None,
    show_progress: bool = True,
    legacy_hash: str | None = None,
) -> tuple[np.ndarray, bool]:
    """The vectors of the rows with ``keys`` (see :func:`kmq.rowcache.row_keys`), in order,
    stored as ``dtype`` and memory-mapped read-only, and whether every row came from the cache.
    Rows the store lacks are computed by ``compute`` in shards of ``shard_rows`` (default: the
    encoder's ``shard_rows`` if it has one, else :data:`SHARD_ROWS`). ``legacy_hash``, the
    :class:`ContentHash` of the texts, lets an earlier version's cache entry be taken over."""
    if not len(keys):
        return np.zeros((0,), dtype=np.float32), True
    store = embedding_store(encoder, view=view, dtype=dtype, cache_dir=cache_dir)
    name = f"pool-{keys_digest(keys)}"
    pool = store.segment(name)
    legacy = None
    if pool is None and legacy_hash is not None:
        root = cache_dir or default_cache_dir()
        legacy = legacy_entry(root, legacy_hash, encoder, view=view, dtype=dtype)
    if legacy is not None:
        old = np.load(legacy, mmap_mode="r")
        if len(old) == len(keys) and old.dtype == np.dtype(dtype):
            pool = store.adopt(name, keys, old)
    if pool is not None:
        pool.check_all()
        return pool.values, True
    located, _, computed = store.compute(
        keys,
        compute,
        shape=None,
        dtype=np.dtype(dtype),
        shard_rows=shard_rows or int(getattr(encoder, "shard_rows", SHARD_ROWS)),
        desc="embedding",
        show_progress=show_progress,
    )
    pool = store.write_pool(name, keys, located)
    store.compact()
    return pool.values, computed == 0


def embed(
    texts: Sequence[str],
    encoder: str | Encoder = DEFAULT_ENCODER,
    *,
    view: str = "user",
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """``(n, d)`` float32 embeddings of ``texts`` by ``encoder`` (a spec of
    :func:`kmq.encoders.get_encoder` or an :class:`Encoder`), cached per row; ``view`` names
    what the texts are (:meth:`kmq.examples.Example.text`), a part of the cache key."""
    model = get_encoder(
        encoder,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        cache_dir=cache_dir,
        show_progress=False,
    )
    root = Path(cache_dir) if cache_dir is not None else None
    vectors, _ = embed_cached(
        list(texts), model, view=view, cache_dir=root, show_progress=show_progress
    )
    return vectors


def embed_cached(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    view: str,
    cache_dir: Path | None = None,
    shard_rows: int | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """Embeddings of ``texts`` (memory-mapped, read-only) and whether they came from the cache."""
    return embed_rows(
        row_keys(texts),
        encode_shards(lambda rows: [texts[i] for i in rows.tolist()], encoder),
        encoder,
        view=view,
        cache_dir=cache_dir,
        shard_rows=shard_rows,
        show_progress=show_progress,
        legacy_hash=content_hash(texts),
    )
