"""LM inference backends: the torch reference and CTranslate2, on a tiny random Llama."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from kmq.backends import LM_BACKENDS, LMBackend, get_lm_backend
from kmq.errors import KmqError
from kmq.examples import Message
from kmq.models import load_causal_lm
from kmq.quality.lm import response_nll

PROMPTS: list[list[Message] | None] = [
    [Message("user", "Name a colour.")],
    [Message("system", "Be brief."), Message("user", "What is two plus two?")],
    None,
    [Message("user", "Tell me a fact about cats, please, a nice one.")],
]
RESPONSES = ["Blue.", "Four, of course.", "Hello there.", "Cats purr when they are content."]


def test_torch_backend_is_the_existing_scorer(tiny_llama: Path) -> None:
    backend = get_lm_backend("torch", str(tiny_llama), device="cpu", batch_size=2)
    assert isinstance(backend, LMBackend)
    model, tokenizer = load_causal_lm(str(tiny_llama), device="cpu")
    expected = response_nll(model, tokenizer, PROMPTS, RESPONSES, batch_size=2)
    np.testing.assert_array_equal(backend.nll(PROMPTS, RESPONSES), expected)


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(KmqError, match=r"lm_backend must be one of torch, ctranslate2; got 'x'"):
        get_lm_backend("x")
    assert LM_BACKENDS == ("torch", "ctranslate2")


def test_missing_ctranslate2_names_the_pip_line(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    backend = get_lm_backend("ctranslate2", str(tiny_llama), cache_dir=tmp_path)
    with pytest.raises(KmqError, match=r"needs CTranslate2: pip install ctranslate2"):
        backend.nll(PROMPTS, RESPONSES)


def test_bad_compute_type_is_an_error(tiny_llama: Path) -> None:
    with pytest.raises(KmqError, match=r"compute_type must be one of int8, .*; got 'int4'"):
        get_lm_backend("ctranslate2", str(tiny_llama), compute_type="int4")


@pytest.fixture(scope="module")
def ct2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed")
    return tmp_path_factory.mktemp("ct2-cache")


def test_ctranslate2_float32_matches_torch(tiny_llama: Path, ct2_cache: Path) -> None:
    reference = get_lm_backend("torch", str(tiny_llama), device="cpu")
    fast = get_lm_backend(
        "ctranslate2", str(tiny_llama), cache_dir=ct2_cache, compute_type="float32"
    )
    expected = reference.score(PROMPTS, RESPONSES)
    got = fast.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(got.nll, expected.nll, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got.response_tokens, expected.response_tokens)
    assert fast.generate(PROMPTS[:2], max_new_tokens=6) == reference.generate(
        PROMPTS[:2], max_new_tokens=6
    )


def test_ctranslate2_int8_keeps_the_ranking(tiny_llama: Path, ct2_cache: Path) -> None:
    reference = get_lm_backend("torch", str(tiny_llama), device="cpu").nll(PROMPTS, RESPONSES)
    int8 = get_lm_backend("ctranslate2", str(tiny_llama), cache_dir=ct2_cache, compute_type="int8")
    got = int8.nll(PROMPTS, RESPONSES)
    assert np.argsort(got).tolist() == np.argsort(reference).tolist()
    assert np.abs(got - reference).max() < 0.05


def test_ctranslate2_conversion_is_cached(
    tiny_llama: Path, ct2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kmq.backends import ctranslate2_lm

    first = get_lm_backend("ctranslate2", str(tiny_llama), cache_dir=ct2_cache)
    first.nll(PROMPTS[:1], RESPONSES[:1])
    folders = sorted(p.name for p in (ct2_cache / "models").iterdir())
    assert all(name.startswith("ct2-") for name in folders)

    def fail(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(ctranslate2_lm, "convert", fail)
    again = get_lm_backend("ctranslate2", str(tiny_llama), cache_dir=ct2_cache)
    np.testing.assert_array_equal(
        again.nll(PROMPTS[:1], RESPONSES[:1]), first.nll(PROMPTS[:1], RESPONSES[:1])
    )
    assert sorted(p.name for p in (ct2_cache / "models").iterdir()) == folders
