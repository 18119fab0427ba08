"""Where kmq keeps what it computes once: embeddings, scores and converted models (a leaf
module, imported by the cache, the encoders and the model loaders alike)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$KMQ_CACHE_DIR``, else ``~/.cache/kmq``."""
    env = os.environ.get("KMQ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kmq"


def cache_root(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` when given, else :func:`default_cache_dir`."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()
