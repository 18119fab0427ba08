"""On-disk embedding cache: keyed by content, encoder and text settings; memory-mapped; resumable.

The key is a sha256 over the encoder's ``name`` (model and weights), the text view, the
length settings and the sha256 of every text in order, so a changed row, model, view or
window never reuses stale vectors. Encoding runs in shards that are saved as they finish: an
interrupted run resumes at the first missing shard.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq.atomic import atomic_path, write_json, write_npy
from kmq.encoders import Encoder

SHARD_ROWS = 4096
CHUNKING = "token-windows/mean-by-tokens/v2"


def default_cache_dir() -> Path:
    """``$KMQ_CACHE_DIR``, else ``~/.cache/kmq``."""
    env = os.environ.get("KMQ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kmq"


class ContentHash:
    """sha256 over texts in order, each prefixed by its length (fed one text at a time)."""

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


def cache_key(texts: Sequence[str], encoder_name: str, view: str, max_length: int | None) -> str:
    return embedding_key(content_hash(texts), encoder_name, view, max_length)


def embedding_key(
    text_hash: str, encoder_name: str, view: str, max_length: int | None, dtype: str = "float32"
) -> str:
    """The cache key of embeddings of the texts with ``text_hash`` (see :class:`ContentHash`);
    float32 (what :func:`embed_cached` stores) keeps the key it always had."""
    parts = [encoder_name, view, f"max_length={max_length}", CHUNKING, text_hash]
    if dtype != "float32":
        parts.append(f"dtype={dtype}")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def compute_sharded(
    folder: Path,
    key: str,
    n: int,
    compute: Callable[[int, int], np.ndarray],
    *,
    meta: dict[str, Any],
    shard_rows: int = SHARD_ROWS,
    desc: str = "computing",
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """Rows ``0..n`` of ``compute(start, stop)``, cached as ``folder/<key>.npy`` (memory-mapped).

    Shards are saved atomically as they finish, so an interrupted run resumes at the first
    missing shard. Returns the array and whether it came whole from the cache.
    """
    final = folder / f"{key}.npy"
    if final.exists():
        return np.load(final, mmap_mode="r"), True
    parts = folder / f"{key}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    spans = [(start, min(start + shard_rows, n)) for start in range(0, n, shard_rows)]
    with tqdm(total=n, desc=desc, unit="row", disable=not show_progress) as bar:
        for start, stop in spans:
            shard = parts / f"{start:012d}-{stop:012d}.npy"
            if not shard.exists():
                write_npy(shard, compute(start, stop))
            bar.update(stop - start)
    shape = join_shards(final, [parts / f"{start:012d}-{stop:012d}.npy" for start, stop in spans])
    write_json(folder / f"{key}.json", meta | {"rows": n, "shape": list(shape)})
    shutil.rmtree(parts, ignore_errors=True)
    return np.load(final, mmap_mode="r"), False


def join_shards(final: Path, shards: Sequence[Path]) -> tuple[int, ...]:
    """The shards one after another in one ``.npy`` file (as ``np.save`` writes it), written
    atomically with plain writes, a shard at a time: neither the array nor a mapping of it is
    ever held in memory. Returns its shape."""
    if not shards:
        write_npy(final, np.zeros((0,), np.float32))
        return (0,)
    first = np.load(shards[0], mmap_mode="r")
    rows = sum(len(np.load(shard, mmap_mode="r")) for shard in shards)
    shape = (rows, *first.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False}
    with atomic_path(final) as tmp, tmp.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header | {"shape": shape})
        for shard in shards:
            fh.write(np.ascontiguousarray(np.load(shard)).tobytes())
    return shape


def embed_cached(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    view: str,
    cache_dir: Path | None = None,
    shard_rows: int = SHARD_ROWS,
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """Embeddings of ``texts`` (memory-mapped, read-only) and whether they came from the cache."""
    return embed_sharded(
        lambda start, stop: list(texts[start:stop]),
        len(texts),
        content_hash(texts),
        encoder,
        view=view,
        cache_dir=cache_dir,
        shard_rows=shard_rows,
        show_progress=show_progress,
    )


def embed_sharded(
    texts: Callable[[int, int], list[str]],
    n: int,
    text_hash: str,
    encoder: Encoder,
    *,
    view: str,
    dtype: str = "float32",
    cache_dir: Path | None = None,
    shard_rows: int = SHARD_ROWS,
    show_progress: bool = True,
) -> tuple[np.ndarray, bool]:
    """Embeddings of ``n`` texts that ``texts(start, stop)`` hands out (asked for in increasing
    order) and whose :class:`ContentHash` is ``text_hash``, stored as ``dtype`` (memory-mapped,
    read-only), and whether they came from the cache. Resumes like :func:`compute_sharded`."""

    def encode(start: int, stop: int) -> np.ndarray:
        return np.asarray(encoder.encode(texts(start, stop)), dtype=np.float32).astype(
            dtype, copy=False
        )

    folder, key, meta = embedding_store(
        text_hash, encoder, view=view, dtype=dtype, cache_dir=cache_dir
    )
    return compute_sharded(
        folder,
        key,
        n,
        encode,
        meta=meta,
        shard_rows=shard_rows,
        desc="embedding",
        show_progress=show_progress,
    )


def embedding_store(
    text_hash: str,
    encoder: Encoder,
    *,
    view: str,
    dtype: str = "float32",
    cache_dir: Path | None = None,
) -> tuple[Path, str, dict[str, Any]]:
    """The folder, key and metadata (what :func:`compute_sharded` takes) under which the
    embeddings by ``encoder`` of the texts with ``text_hash`` are cached; every engine that
    embeds stores them here, so they share the cache."""
    max_length = getattr(encoder, "max_length", None)
    meta = {"encoder": encoder.name, "view": view, "max_length": max_length, "chunking": CHUNKING}
    key = embedding_key(text_hash, encoder.name, view, max_length, dtype)
    return (cache_dir or default_cache_dir()) / "embeddings", key, meta
