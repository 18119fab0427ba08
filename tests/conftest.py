"""Shared fixtures: a fake encoder, blob data, the shared data folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Timing is not what the property tests check: a loaded machine must not fail them.
settings.register_profile("kmq", deadline=None)
settings.load_profile("kmq")

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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama saved with SmolLM2's tokenizer (read from the packaged GGUF)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from kmq.errors import KmqError
    from kmq.models import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except KmqError as exc:
        pytest.skip(str(exc))
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Fixtures that build (and tests that then run) a small torch model
MODEL_FIXTURES = {"tiny_llama", "taught_lm", "tiny_model", "tiny_dir", "tiny_lm", "tiny_rm_dir"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``model`` every test that builds or runs a torch model (it uses a model fixture, or
    its module imports torch) and ``ray`` every test of a module that imports Ray; ``make
    test-fast`` leaves both out."""
    for item in items:
        names = getattr(getattr(item, "module", None), "__dict__", {})
        if set(getattr(item, "fixturenames", ())) & MODEL_FIXTURES or "torch" in names:
            item.add_marker(pytest.mark.model)
        if "ray" in names:
            item.add_marker(pytest.mark.ray)
