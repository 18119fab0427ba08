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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kmq.atomic import write_json, write_npy
from kmq.encoders import Encoder

SHARD_ROWS = 4096
CHUNKING = "token-windows/mean-by-tokens/v1"


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
    root = (cache_dir or default_cache_dir()) / "embeddings"
    max_length = getattr(encoder, "max_length", None)
    key = cache_key(texts, encoder.name, view, max_length)
    final = root / f"{key}.npy"
    if final.exists():
        return np.load(final, mmap_mode="r"), True
    parts = root / f"{key}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), shard_rows)
    bar = tqdm(total=len(texts), desc="embedding", unit="row", disable=not show_progress)
    for start in starts:
        shard = parts / f"{start:012d}.npy"
        stop = min(start + shard_rows, len(texts))
        if not shard.exists():
            write_npy(shard, encoder.encode(list(texts[start:stop])))
        bar.update(stop - start)
    bar.close()
    shards = [np.load(parts / f"{start:012d}.npy") for start in starts]
    vectors = np.concatenate(shards).astype(np.float32) if shards else np.zeros((0, 0), np.float32)
    write_npy(final, vectors)
    write_json(
        root / f"{key}.json",
        {
            "encoder": encoder.name,
            "view": view,
            "max_length": max_length,
            "chunking": CHUNKING,
            "rows": len(texts),
            "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
        },
    )
    shutil.rmtree(parts, ignore_errors=True)
    return np.load(final, mmap_mode="r"), False
