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

from kmq.atomic import write_json, write_npy
from kmq.encoders import Encoder

SHARD_ROWS = 4096
CHUNKING = "token-windows/mean-by-tokens/v2"


def default_cache_dir() -> Path:
    """``$KMQ_CACHE_DIR``, else ``~/.cache/kmq``."""
    env = os.environ.get("KMQ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kmq"


def content_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_key(texts: Sequence[str], encoder_name: str, view: str, max_length: int | None) -> str:
    parts = [encoder_name, view, f"max_length={max_length}", CHUNKING, content_hash(texts)]
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
    shards = [np.load(parts / f"{start:012d}-{stop:012d}.npy") for start, stop in spans]
    values = np.concatenate(shards) if shards else np.zeros((0,), np.float32)
    write_npy(final, values)
    write_json(folder / f"{key}.json", meta | {"rows": n, "shape": list(values.shape)})
    shutil.rmtree(parts, ignore_errors=True)
    return np.load(final, mmap_mode="r"), False


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
    max_length = getattr(encoder, "max_length", None)

    def encode(start: int, stop: int) -> np.ndarray:
        return np.asarray(encoder.encode(list(texts[start:stop])), dtype=np.float32)

    return compute_sharded(
        (cache_dir or default_cache_dir()) / "embeddings",
        cache_key(texts, encoder.name, view, max_length),
        len(texts),
        encode,
        meta={
            "encoder": encoder.name,
            "view": view,
            "max_length": max_length,
            "chunking": CHUNKING,
        },
        shard_rows=shard_rows,
        desc="embedding",
        show_progress=show_progress,
    )
