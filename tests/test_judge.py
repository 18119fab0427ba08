"""The LLM-judge quality scorer: rating arithmetic, the HTTP backend against a local stub
server, the local backend on a tiny random Llama, and (slow) real SmolLM2."""

from __future__ import annotations

import logging
import math
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.quality import QualityScorer, get_quality_scorer
from kmq.quality.judge import (
    JUDGE_TEMPLATE_VERSION,
    JudgeScorer,
    RowFailure,
    expected_rating,
    make_judge,
    render_judge_prompt,
)
from tests.openai_stub import OpenAIStub, Reply, content_reply, logprob_reply

# Hand-computed: ratings 4 (0.3) and 5 ("5" 0.6 + " 5" 0.05) renormalised over 0.95.
MIXED = {"5": 0.6, "4": 0.3, " 5": 0.05, "The": 0.05}
MIXED_SCORE = (4 * 0.3 + 5 * 0.65) / 0.95
SPLIT = {"1": 0.5, "6": 0.5}  # -> 3.5
ONLY_THREE = {"3": 0.2, "\n": 0.8}  # -> 3.0 after renormalising


def prompts_and_responses(n: int) -> tuple[list[list[Message]], list[str]]:
    prompts = [[Message("user", f"question {i}")] for i in range(n)]
    return prompts, [f"answer [row {i}]" for i in range(n)]


def row_of(request: dict[str, Any]) -> int:
    content = request["messages"][0]["content"]
    return int(content.split("[row ")[1].split("]")[0])


def http_judge(stub: OpenAIStub, **options: Any) -> JudgeScorer:
    settings: dict[str, Any] = {
        "backend": "http",
        "base_url": stub.url,
        "model": "stub-model",
        "backoff": 0.001,
        "timeout": 2.0,
        "show_progress": False,
    }
    return make_judge(**(settings | options))


@pytest.fixture
def stub() -> Any:
    with OpenAIStub() as server:
        yield server


# --------------------------------------------------------------------------- pure functions


def test_expected_rating_is_the_renormalised_mean() -> None:
    mass = np.array([0.0, 0.0, 0.0, 0.3, 0.65, 0.0])
    assert expected_rating(mass, min_mass=1e-4) == pytest.approx(MIXED_SCORE)
    with pytest.raises(RowFailure, match="probability"):
        expected_rating(np.full(6, 1e-6), min_mass=1e-4)


def test_render_keeps_every_turn_and_cuts_long_texts_to_the_budget() -> None:
    prompt = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hey")]
    text, cut = render_judge_prompt(prompt, "Fine.", max_chars=200)
    assert not cut
    assert "System: Be brief.\n\nUser: Hi\n\nAssistant: Hey" in text
    assert "Fine." in text

    long_prompt = [Message("user", "q" * 5000)]
    text, cut = render_judge_prompt(long_prompt, "short answer", max_chars=300)
    assert cut
    assert "short answer" in text  # the short side keeps everything, the long side is clipped
    assert text.count("q") <= 300 - len("short answer")

    bare, _ = render_judge_prompt([Message("user", "")], "", max_chars=300)
    assert len(text) - len(bare) <= 300 + len("User: ")


# --------------------------------------------------------------------------- http backend


def test_ratings_come_from_top_logprobs(stub: OpenAIStub) -> None:
    replies = [MIXED, SPLIT, ONLY_THREE]
    stub.script = lambda request, seen: logprob_reply(replies[row_of(request)])
    judge = http_judge(stub)

    scores = judge.rate(*prompts_and_responses(3))

    np.testing.assert_allclose(scores, [MIXED_SCORE, 3.5, 3.0])
    assert judge.failures_ == []
    assert judge.fallback_ == []
    assert len(stub.requests) == 3
    sent = stub.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "stub-model"
    assert sent.body["max_tokens"] == 1
    assert sent.body["temperature"] == 0
    assert sent.body["logprobs"] is True
    assert sent.body["top_logprobs"] == 20


def test_without_logprobs_the_reply_digit_is_the_score(stub: OpenAIStub) -> None:
    stub.script = lambda request, seen: content_reply("5")
    judge = http_judge(stub)

    scores = judge.rate(*prompts_and_responses(2))

    np.testing.assert_array_equal(scores, [5.0, 5.0])
    assert judge.fallback_ == [0, 1]
    assert judge.failures_ == []


def test_server_errors_are_retried_until_success(stub: OpenAIStub) -> None:
    def script(request: dict[str, Any], seen: int) -> Reply:
        return Reply({"error": "busy"}, status=503) if seen < 2 else logprob_reply(SPLIT)

    stub.script = script
    judge = http_judge(stub, max_retries=4)

    scores = judge.rate(*prompts_and_responses(2))

    np.testing.assert_allclose(scores, [3.5, 3.5])
    assert judge.failures_ == []
    assert len(stub.requests) == 6


def test_429_waits_for_retry_after(stub: OpenAIStub) -> None:
    def script(request: dict[str, Any], seen: int) -> Reply:
        if seen == 0:
            return Reply({"error": "slow down"}, status=429, headers={"Retry-After": "0.3"})
        return logprob_reply(SPLIT)

    stub.script = script
    judge = http_judge(stub)  # backoff is 1 ms: only Retry-After explains a 0.3 s wait

    start = time.monotonic()
    scores = judge.rate(*prompts_and_responses(1))

    assert time.monotonic() - start >= 0.3
    np.testing.assert_allclose(scores, [3.5])
    assert len(stub.requests) == 2


def test_timeouts_fail_the_row_after_max_retries(stub: OpenAIStub) -> None:
    def script(request: dict[str, Any], seen: int) -> Reply:
        return Reply(logprob_reply(SPLIT).body, delay=0.5 if row_of(request) == 0 else 0.0)

    stub.script = script
    judge = http_judge(stub, timeout=0.1, max_retries=2)

    scores = judge.rate(*prompts_and_responses(2))

    assert math.isnan(scores[0])
    assert scores[1] == pytest.approx(3.5)
    [failure] = judge.failures_
    assert failure["index"] == 0
    assert failure["kind"] == "timeout"
    assert "timed out after 0.1 s" in failure["error"]
    assert failure["attempts"] == 3
    assert sum(row_of(r.body) == 0 for r in stub.requests) == 3


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(b"<html>oops"), "not JSON"),
        (Reply({"id": "x", "object": "chat.completion"}), "no choices"),
        (content_reply("It is quite good."), "no rating digit"),
        (content_reply("7"), "no rating digit"),
        (logprob_reply({"The": 0.9, "It": 0.1}), "probability"),
        (Reply({"error": "bad request"}, status=400), "HTTP 400"),
    ],
)
def test_bad_replies_fail_the_row_at_once(stub: OpenAIStub, reply: Reply, reason: str) -> None:
    stub.script = lambda request, seen: reply if row_of(request) == 1 else content_reply("2")
    judge = http_judge(stub)

    scores = judge.rate(*prompts_and_responses(3))

    assert np.isnan(scores).tolist() == [False, True, False]
    [failure] = judge.failures_
    assert failure["index"] == 1
    assert reason in failure["error"]
    assert failure["attempts"] == 1
    assert len(stub.requests) == 3


def test_concurrency_never_exceeds_the_limit(stub: OpenAIStub) -> None:
    stub.script = lambda request, seen: Reply(content_reply("3").body, delay=0.1)
    judge = http_judge(stub, max_concurrency=3)

    scores = judge.rate(*prompts_and_responses(12))

    np.testing.assert_array_equal(scores, np.full(12, 3.0))
    assert stub.max_in_flight == 3


def test_api_key_is_sent_but_never_recorded(
    stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-0123456789"
    monkeypatch.setenv("KMQ_JUDGE_KEY", secret)

    def script(request: dict[str, Any], seen: int) -> Reply:
        if row_of(request) == 0:
            return Reply({"error": f"bad request for key {secret}"}, status=400)
        return content_reply("4")

    stub.script = script
    judge = http_judge(stub, api_key_env="KMQ_JUDGE_KEY")

    with caplog.at_level(logging.DEBUG, logger="kmq"):
        scores = judge.rate(*prompts_and_responses(2))

    assert math.isnan(scores[0])
    assert all(r.headers["Authorization"] == f"Bearer {secret}" for r in stub.requests)
    assert "HTTP 400" in judge.failures_[0]["error"]
    for text in (
        judge.fingerprint(),
        repr(judge.failures_),
        repr(vars(judge.backend)),
        caplog.text,
    ):
        assert secret not in text


def test_a_rejected_key_stops_the_run_without_showing_it(
    stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789"
    monkeypatch.setenv("KMQ_JUDGE_KEY", secret)
    stub.script = lambda request, seen: Reply({"error": f"key {secret} revoked"}, status=401)
    judge = http_judge(stub, api_key_env="KMQ_JUDGE_KEY", max_concurrency=2)

    with pytest.raises(KmqError, match="HTTP 401") as raised:
        judge.rate(*prompts_and_responses(10))

    assert secret not in str(raised.value)
    assert "$KMQ_JUDGE_KEY" in str(raised.value)
    assert len(stub.requests) < 10  # the remaining rows were dropped


def test_no_authorization_header_without_a_key(
    stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KMQ_JUDGE_KEY", raising=False)
    http_judge(stub, api_key_env="KMQ_JUDGE_KEY").rate(*prompts_and_responses(1))
    assert "Authorization" not in stub.requests[0].headers


def test_one_dropped_connection_fails_one_row(stub: OpenAIStub) -> None:
    stub.script = lambda request, seen: (
        Reply(drop=True) if row_of(request) == 2 else (content_reply("6"))
    )
    judge = http_judge(stub, max_retries=1)

    scores = judge.rate(*prompts_and_responses(4))

    assert np.isnan(scores).tolist() == [False, False, True, False]
    [failure] = judge.failures_
    assert failure["kind"] == "connection"
    assert failure["attempts"] == 2


def test_endpoint_down_raises_naming_the_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    judge = make_judge(
        backend="http", base_url=url, model="m", max_retries=1, backoff=0.001, show_progress=False
    )
    with pytest.raises(KmqError, match=re.escape(f"{url}/chat/completions cannot be used")):
        judge.rate(*prompts_and_responses(20))


def test_failures_are_logged_with_a_summary(
    stub: OpenAIStub, caplog: pytest.LogCaptureFixture
) -> None:
    stub.script = lambda request, seen: (
        content_reply("no idea") if row_of(request) else (content_reply("4"))
    )
    judge = http_judge(stub)

    with caplog.at_level(logging.WARNING, logger="kmq"):
        judge.rate(*prompts_and_responses(3))

    assert judge.failure_summary().startswith("2 rows failed (2 no-digit)")
    assert "judge: 2 of 3 rows are NaN" in caplog.text


def test_score_rates_each_examples_last_response(stub: OpenAIStub) -> None:
    stub.script = lambda request, seen: content_reply(
        "5" if "Paris" in request["messages"][0]["content"] else "oops"
    )
    examples = [
        Example(
            id=f"ex{i}",
            row=i,
            messages=(
                Message("user", "Capital of France?"),
                Message("assistant", answer),
            ),
        )
        for i, answer in enumerate(["Paris.", "Lyon."])
    ]
    judge = get_quality_scorer(
        "judge", backend="http", base_url=stub.url, model="m", show_progress=False
    )
    assert isinstance(judge, JudgeScorer)
    assert isinstance(judge, QualityScorer)

    scores = judge.score(examples)

    assert scores[0] == 5.0
    assert math.isnan(scores[1])
    assert judge.failures_[0]["id"] == "ex1"
    assert "User: Capital of France?" in stub.requests[0].body["messages"][0]["content"]


def test_long_rows_are_truncated_and_recorded(stub: OpenAIStub) -> None:
    judge = http_judge(stub, max_chars=500)
    prompts, responses = prompts_and_responses(3)
    responses[1] = "word " * 400 + responses[1]

    judge.rate(prompts, responses)

    assert judge.truncated_ == [1]
    assert len(stub.requests[0].body["messages"][0]["content"]) < 1000
    assert all(len(r.body["messages"][0]["content"]) < 1000 for r in stub.requests)


def test_fingerprint_names_backend_model_template_and_settings() -> None:
    judge = make_judge(backend="http", base_url="http://127.0.0.1:9/v1", model="judge-7b")
    fingerprint = judge.fingerprint()
    for part in ("http/", "http://127.0.0.1:9/v1", "judge-7b", JUDGE_TEMPLATE_VERSION, "6000"):
        assert part in fingerprint
    other = make_judge(backend="http", base_url="http://127.0.0.1:9/v1", model="judge-8b")
    assert other.fingerprint() != fingerprint


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "gpt"}, "one of local, http"),
        ({"backend": "http"}, "needs base_url"),
        ({"backend": "http", "base_url": "127.0.0.1:8000/v1"}, "http:// or https://"),
        ({"base_url": "http://127.0.0.1:8000/v1"}, "only used by backend='http'"),
        ({"backend": "http", "base_url": "http://h/v1", "max_concurrency": 0}, "max_concurrency"),
        ({"backend": "http", "base_url": "http://h/v1", "timeout": 0}, "timeout"),
        ({"backend": "http", "base_url": "http://h/v1", "max_retries": -1}, "max_retries"),
        ({"backend": "http", "base_url": "http://h/v1", "api_key_env": ""}, "api_key_env"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_chars": 10}, "max_chars"),
        ({"min_mass": 0.0}, "min_mass"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(KmqError, match=message):
        make_judge(**options)


# --------------------------------------------------------------------------- local backend

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (hidden 32) with a character-level tokenizer, saved to a folder."""
    torch = pytest.importorskip("torch")
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(r"[\s\S]"), behavior="isolated"
    )
    tok.decoder = tokenizers.decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-judge")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def local_judge(folder: Path, **options: Any) -> JudgeScorer:
    return make_judge(model=str(folder), show_progress=False, **options)


def uneven_rows() -> tuple[list[list[Message]], list[str]]:
    prompts = [
        [Message("user", "2+2?")],
        [Message("system", "Answer well."), Message("user", "Explain gravity in depth, please.")],
        [Message("user", "Hi")],
        [Message("user", "Name a colour."), Message("assistant", "Red."), Message("user", "More")],
    ]
    return prompts, ["4", "Mass attracts mass; " * 5, "Hello!", "Blue, green."]


def test_local_scores_are_ratings_and_batch_invariant(tiny_model: Path) -> None:
    prompts, responses = uneven_rows()
    one = local_judge(tiny_model, batch_size=1).rate(prompts, responses)
    batched = local_judge(tiny_model, batch_size=3).rate(prompts, responses)

    assert np.all((one >= 1) & (one <= 6))
    np.testing.assert_allclose(batched, one, atol=1e-5)


def test_local_score_matches_a_hand_computation(tiny_model: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    prompts, responses = uneven_rows()
    judge = local_judge(tiny_model, batch_size=4)
    scores = judge.rate(prompts, responses)

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    text, _ = render_judge_prompt(prompts[0], responses[0], max_chars=6000)
    chat = f"<user>{text}\n<assistant>"
    ids = tokenizer(chat, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    digit_probs = np.array(
        [probs[tokenizer.convert_tokens_to_ids(str(r))].item() for r in range(1, 7)]
    )
    by_hand = float(np.arange(1, 7) @ digit_probs / digit_probs.sum())

    assert scores[0] == pytest.approx(by_hand, abs=1e-5)  # the shortest row: left-padded
    assert "local/" in judge.fingerprint()
    assert tiny_model.name in judge.fingerprint()


# --------------------------------------------------------------------------- real SmolLM2

PAIRS = [
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the molecules of the air, and short blue wavelengths are "
        "scattered much more strongly than long red ones. This Rayleigh scattering sends blue "
        "light towards our eyes from every part of the sky, so the sky looks blue.",
    ),
    (
        "How do I reverse a list in Python?",
        "Use slicing with a negative step: reversed_list = my_list[::-1] returns a new list in "
        "reverse order. To reverse the list in place, call my_list.reverse() instead.",
    ),
    (
        "What is the boiling point of water at sea level?",
        "At sea level, where the air pressure is one atmosphere, pure water boils at 100 "
        "degrees Celsius, which is 212 degrees Fahrenheit.",
    ),
]


def shuffled_words(text: str, seed: int) -> str:
    words = text.split()
    order = np.random.default_rng(seed).permutation(len(words))
    return " ".join(words[i] for i in order)


@pytest.mark.slow
def test_smollm2_rates_real_answers_above_shuffled_ones() -> None:
    """On the mean over the pairs only: SmolLM2-135M is too weak a judge to order each pair.

    Measured (float32, CPU): real [2.724, 1.626, 2.452], shuffled [2.825, 1.687, 2.226]; the
    shuffled answer scores lower in 1 of 3 pairs and the means differ by 0.02. The model puts
    most of its rating mass on "1" whatever it reads; use a larger judge for real scoring.
    """
    judge = make_judge(show_progress=False)
    prompts = [[Message("user", question)] for question, _ in PAIRS]
    real = judge.rate(prompts, [answer for _, answer in PAIRS])
    shuffled = judge.rate(prompts, [shuffled_words(answer, seed=0) for _, answer in PAIRS])
    print(f"\nSmolLM2 judge: real {np.round(real, 3)}, shuffled {np.round(shuffled, 3)}")

    assert np.all((real >= 1) & (real <= 6))
    assert real.mean() > shuffled.mean()
