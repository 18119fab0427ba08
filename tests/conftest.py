"""Shared fixtures: a fake encoder, blob data, the shared data folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(
    os.environ.get("KMQ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


class FakeEncoder:
    """Deterministic vectors from a hash of each text: no model, instant, offline."""

    name = "fake-encoder/v1"

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).normal(size=self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_blobs(
    n: int, k: int, dim: int = 8, seed: int = 0, spread: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around ``k`` random unit centres, with their true blob index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(k, size=n)
    x = centres[truth] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), truth


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(600, 12)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the shared real data is needed for this test")
    return SHARED
