from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from kmq.cache import cache_key, embed_cached
from tests.conftest import FakeEncoder

TEXTS = [f"text number {i}" for i in range(25)]


def test_key_changes_with_content_encoder_view_and_window() -> None:
    base = cache_key(TEXTS, "enc", "user", None)
    assert base == cache_key(list(TEXTS), "enc", "user", None)
    assert base != cache_key([*TEXTS[:-1], "changed"], "enc", "user", None)
    assert base != cache_key(TEXTS[::-1], "enc", "user", None)
    assert base != cache_key(TEXTS, "enc2", "user", None)
    assert base != cache_key(TEXTS, "enc", "full", None)
    assert base != cache_key(TEXTS, "enc", "user", 128)
    # no ambiguity from concatenation: ["ab", "c"] vs ["a", "bc"]
    assert cache_key(["ab", "c"], "e", "user", None) != cache_key(["a", "bc"], "e", "user", None)


def test_reuse_is_memory_mapped_and_never_stale(tmp_path: Path) -> None:
    enc = FakeEncoder()
    first, hit = embed_cached(TEXTS, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert not hit
    calls = enc.calls
    again, hit = embed_cached(TEXTS, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert hit and enc.calls == calls
    assert isinstance(again, np.memmap)
    assert np.array_equal(first, again)
    changed = [*TEXTS[:-1], "a different last row"]
    fresh, hit = embed_cached(changed, enc, view="user", cache_dir=tmp_path, show_progress=False)
    assert not hit
    assert not np.array_equal(fresh[-1], first[-1])
    assert np.array_equal(fresh[:-1], first[:-1])


class CrashingEncoder(FakeEncoder):
    """Fails on its n-th call, like a run killed in the middle of embedding."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.calls + 1 == self.fail_on:
            raise RuntimeError("killed")
        self.seen.extend(texts)
        return super().encode(texts)


def test_interrupted_embedding_resumes_at_the_missing_shard(tmp_path: Path) -> None:
    crashing = CrashingEncoder(fail_on=3)
    with pytest.raises(RuntimeError, match="killed"):
        embed_cached(
            TEXTS, crashing, view="user", cache_dir=tmp_path, shard_rows=10, show_progress=False
        )
    assert crashing.seen == TEXTS[:20]
    resumed = CrashingEncoder(fail_on=0)
    out, hit = embed_cached(
        TEXTS, resumed, view="user", cache_dir=tmp_path, shard_rows=10, show_progress=False
    )
    assert not hit
    assert resumed.seen == TEXTS[20:]  # only the missing shard was encoded
    assert np.allclose(out, FakeEncoder().encode(TEXTS))
