"""LM inference backends: the torch reference, CTranslate2 and llama.cpp, on a tiny random Llama."""

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
    choices = "torch, ctranslate2, llama-cpp"
    with pytest.raises(KmqError, match=rf"lm_backend must be one of {choices}; got 'x'"):
        get_lm_backend("x")
    assert LM_BACKENDS == ("torch", "ctranslate2", "llama-cpp")


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


# ---------------------------------------------------------------------------------------------
# llama.cpp


def test_missing_llama_cpp_names_the_pip_line(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    (tiny_llama / "weights.gguf").touch()
    try:
        backend = get_lm_backend("llama-cpp", str(tiny_llama))
        with pytest.raises(KmqError, match=r"needs llama-cpp-python: .*pip install llama-cpp"):
            backend.nll(PROMPTS, RESPONSES)
    finally:
        (tiny_llama / "weights.gguf").unlink()


def test_llama_cpp_refuses_a_gpu_and_a_folder_without_one_gguf(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with pytest.raises(KmqError, match=r"runs on the CPU only \(device='cpu'\); got 'cuda'"):
        get_lm_backend("llama-cpp", str(tiny_llama), device="cuda")
    backend = get_lm_backend("llama-cpp", str(tmp_path))
    with pytest.raises(KmqError, match=r"must hold exactly one \*\.gguf file; found 0"):
        backend.fingerprint()
    with pytest.raises(KmqError, match=r"needs 'smollm2' or a local folder"):
        get_lm_backend("llama-cpp", str(tmp_path / "nowhere")).fingerprint()


def test_response_nll_from_logits_by_hand() -> None:
    from kmq.backends.llama_cpp_lm import logits_nll

    # 3 positions over a 2-token vocabulary; context = 1 token, response = tokens [1, 0]
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [5.0, 5.0]])
    # position 0 predicts response[0] = 1 with p 1/2; position 1 predicts 0 with p 3/4
    expected = -(np.log(0.5) + np.log(0.75)) / 2
    assert logits_nll(logits, 1, [1, 0]) == pytest.approx(expected, abs=1e-12)


def permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's q/k rows (rotate-half order) in llama.cpp's (interleaved) order."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the ``tiny_llama`` folder with its float32 weights also written as a GGUF file,
    with SmolLM2's vocabulary (read from the packaged GGUF)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    gguf = pytest.importorskip("gguf")
    import shutil

    import transformers

    from kmq.models import smollm2_gguf

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = model.config
    folder = tmp_path_factory.mktemp("tiny-gguf")
    shutil.copytree(tiny_llama, folder, dirs_exist_ok=True)
    vocab = gguf.GGUFReader(smollm2_gguf()).fields
    writer = gguf.GGUFWriter(folder / "tiny.gguf", "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model(vocab["tokenizer.ggml.model"].contents())
    writer.add_tokenizer_pre(vocab["tokenizer.ggml.pre"].contents())
    writer.add_token_list(vocab["tokenizer.ggml.tokens"].contents())
    writer.add_token_types(vocab["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(vocab["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for layer in range(config.num_hidden_layers):
        for hf, ours in names.items():
            weight = weights[f"model.layers.{layer}.{hf}.weight"]
            if ours == "attn_q":
                weight = permute_rope(weight, config.num_attention_heads)
            elif ours == "attn_k":
                weight = permute_rope(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{ours}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder


def test_llama_cpp_float32_matches_torch(tiny_gguf: Path) -> None:
    reference = get_lm_backend("torch", str(tiny_gguf), device="cpu")
    fast = get_lm_backend("llama-cpp", str(tiny_gguf), threads=1)
    expected = reference.score(PROMPTS, RESPONSES)
    got = fast.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(got.nll, expected.nll, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(got.response_tokens, expected.response_tokens)
    assert fast.generate(PROMPTS[:2], max_new_tokens=6) == reference.generate(
        PROMPTS[:2], max_new_tokens=6
    )
    assert "llama-cpp" in fast.fingerprint() and "tiny.gguf@" in fast.fingerprint()
