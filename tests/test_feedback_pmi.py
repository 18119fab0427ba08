"""``gold-pmi`` and ``pmi-gap`` feedback on a tiny LM trained here to answer its prompts.

The model learns 9 (animal, colour) questions, each answered in two sentences whose second one
names the colour, and the same answers without any prompt. It then knows which answer fits
which prompt, so each corrupted twin of a clean answer (words shuffled, another prompt's answer,
the first sentence only) must tell it less about its prompt than the clean answer.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kmq.examples import Message
from kmq.feedback import DEFAULT_FEEDBACK, get_feedback_scorer, needs_generation
from kmq.feedback import pmi as pmi_module
from kmq.feedback.pmi import (
    GoldPMIFeedback,
    end_windows,
    pmi_nll,
    pmi_windows,
    reordered,
    reordered_nll,
    sound_probability,
    strip_end_markers,
)
from kmq.models import ChatFormat, load_causal_lm
from kmq.quality.lm import score_responses, token_ids
from tests.test_quality_lm import CHATML, byte_tokenizer

ANIMALS = ("Cats", "Dogs", "Owls")
COLOURS = ("red", "blue", "green")
PAIRS = list(itertools.product(ANIMALS, COLOURS))


def prompt(animal: str, colour: str) -> list[Message]:
    return [Message("user", f"Tell me about {animal.lower()} and {colour}.")]


def answer(animal: str, colour: str) -> str:
    return f"{animal} are nice. The colour is {colour}."


@pytest.fixture(scope="module")
def taught_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama trained (full batch, 300 Adam steps, ~seconds) on the 9 answers, each
    after its prompt and after no prompt; loss on the answer and its end-of-turn only."""
    tokenizer = byte_tokenizer(chat_template=CHATML)
    chat = ChatFormat(tokenizer)
    contexts = [chat.context(prompt(*p)) for p in PAIRS] + [chat.context(None)] * len(PAIRS)
    responses = [chat.response(answer(*p)) for p in PAIRS] * 2
    rows = list(zip(token_ids(tokenizer, contexts), token_ids(tokenizer, responses), strict=True))
    width = max(len(c) + len(r) for c, r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (c, r) in enumerate(rows):
        ids[i, : len(c) + len(r)] = torch.tensor(c + r)
        labels[i, len(c) : len(c) + len(r)] = torch.tensor(r)
        mask[i, : len(c) + len(r)] = 1
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("taught-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def twins() -> tuple[list[list[Message]], dict[str, list[str]]]:
    """Every prompt with its clean answer and the three corrupted twins of it."""
    rng = np.random.default_rng(0)
    prompts = [prompt(*p) for p in PAIRS]
    clean = [answer(*p) for p in PAIRS]
    shuffled = []
    for text in clean:
        words = text.split()
        shuffled.append(" ".join(words[i] for i in rng.permutation(len(words))))
    swapped = [
        answer(ANIMALS[(ANIMALS.index(a) + 1) % 3], COLOURS[(COLOURS.index(c) + 1) % 3])
        for a, c in PAIRS
    ]
    truncated = [text.split(". ")[0] + "." for text in clean]
    corrupted = {"shuffle": shuffled, "swap": swapped, "truncate": truncated}
    assert all(x != y for twin in corrupted.values() for x, y in zip(twin, clean, strict=True))
    return prompts, {"clean": clean, **corrupted}


def test_gold_pmi_is_the_nll_drop_the_prompt_brings_summed_over_the_answer(
    taught_lm: Path,
) -> None:
    scorer = GoldPMIFeedback(model=str(taught_lm), batch_size=4)
    prompts, answers = twins()
    scores = scorer.score(prompts, answers["clean"], [""] * len(prompts))
    model, tokenizer = load_causal_lm(str(taught_lm), device="cpu")
    given = score_responses(model, tokenizer, prompts, answers["clean"])
    alone = score_responses(model, tokenizer, [None] * len(prompts), answers["clean"])
    expected = (alone.nll - given.nll) * given.response_tokens
    assert np.allclose(scores, expected)
    assert (scores > 1.0).all()  # the prompt names the animal and the colour


@pytest.mark.parametrize("kind", ["swap", "truncate"])
def test_gold_pmi_ranks_every_clean_answer_above_its_corrupted_twin(
    taught_lm: Path, kind: str
) -> None:
    scorer = get_feedback_scorer("gold-pmi", model=str(taught_lm), batch_size=4)
    prompts, answers = twins()
    unused = [""] * len(prompts)
    clean = scorer.score(prompts, answers["clean"], unused)
    bad = scorer.score(prompts, answers[kind], unused)
    assert (clean > bad).all(), (kind, clean.round(2).tolist(), bad.round(2).tolist())


@pytest.mark.parametrize("kind", ["swap", "truncate"])
def test_pmi_gap_falls_when_the_gold_answer_is_corrupted(taught_lm: Path, kind: str) -> None:
    scorer = get_feedback_scorer("pmi-gap", model=str(taught_lm), batch_size=4)
    prompts, answers = twins()
    generated = [f"{a} are nice." for a, _ in PAIRS]  # a model that has not learnt the colour
    clean = scorer.score(prompts, answers["clean"], generated)
    bad = scorer.score(prompts, answers[kind], generated)
    assert (clean > 0).all()
    assert (clean > bad).all(), (kind, clean.round(2).tolist(), bad.round(2).tolist())


@pytest.mark.parametrize("name", ["gold-pmi", "pmi-gap"])
def test_shuffled_answers_score_lower_on_average(taught_lm: Path, name: str) -> None:
    """Only the mean (what a cluster gets, Eq. 5) is pinned: a shuffled answer is out of the
    tiny model's distribution with and without the prompt, so its PMI row by row is erratic
    (here from -13 to +10 nats around the clean answers' ~2), as it is only partly lowered on
    real data (benchmarks/results/corruption.md)."""
    scorer = get_feedback_scorer(name, model=str(taught_lm), batch_size=4)
    prompts, answers = twins()
    generated = [f"{a} are nice." for a, _ in PAIRS]
    clean = scorer.score(prompts, answers["clean"], generated)
    shuffled = scorer.score(prompts, answers["shuffle"], generated)
    assert shuffled.mean() < clean.mean()


def test_a_swapped_answer_tells_nothing_about_its_prompt(taught_lm: Path) -> None:
    scorer = get_feedback_scorer("gold-pmi", model=str(taught_lm), batch_size=4)
    prompts, answers = twins()
    assert (scorer.score(prompts, answers["swap"], [""] * len(prompts)) < 0).all()


def test_gold_sound_is_the_loops_default_and_needs_no_generation() -> None:
    from kmq.cli import build_parser

    args = build_parser().parse_args(["iterate", "pool.jsonl", "--run", "r"])
    assert args.feedback == DEFAULT_FEEDBACK == "gold-sound"
    assert not needs_generation(get_feedback_scorer(DEFAULT_FEEDBACK))


def test_only_pmi_gap_needs_generations() -> None:
    assert not needs_generation(get_feedback_scorer("gold-pmi"))
    assert needs_generation(get_feedback_scorer("pmi-gap"))
    assert needs_generation(get_feedback_scorer("similarity"))


def test_empty_gold_answer_is_nan(taught_lm: Path) -> None:
    scorer = get_feedback_scorer("gold-pmi", model=str(taught_lm), batch_size=4)
    out = scorer.score([prompt("Cats", "red")] * 2, ["", answer("Cats", "red")], ["", ""])
    assert np.isnan(out[0]) and np.isfinite(out[1])


def test_long_rows_keep_half_the_window_for_the_prompt() -> None:
    tokenizer = byte_tokenizer(chat_template=CHATML)
    long_prompt = [Message("user", "q" * 100)]
    short_prompt = [Message("user", "hi")]
    rows, given, alone = pmi_windows(tokenizer, [long_prompt, short_prompt], ["a" * 100] * 2, 64)
    assert rows == [0, 1]
    (context, answer), (short_context, short_answer) = given
    assert len(context) == 32 and len(answer) == 32  # the prompt's last 32 tokens stay
    assert len(short_context) + len(short_answer) == 64 and len(short_answer) > 32
    assert [r for _, r in alone] == [answer, short_answer]  # same answer tokens without x
    header = token_ids(tokenizer, [ChatFormat(tokenizer).context(None)])[0]
    assert all(c == header for c, _ in alone)


def end_probability(
    model_dir: Path, prompts: list[list[Message]], answers: list[str]
) -> np.ndarray:
    """P(end of turn | x, y) read off the model's logits at the answer's last token."""
    model, tokenizer = load_causal_lm(str(model_dir), device="cpu")
    chat = ChatFormat(tokenizer)
    out = []
    for p, a in zip(prompts, answers, strict=True):
        context = token_ids(tokenizer, [chat.context(p)])[0] + token_ids(tokenizer, [a])[0]
        (marker,) = token_ids(tokenizer, [chat.end_of_turn])[0]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
        out.append(float(torch.softmax(logits, dim=-1)[marker]))
    return np.array(out)


def test_gold_fit_is_on_topic_times_complete(taught_lm: Path) -> None:
    """S = σ(PMI) · P(end | x, y), both read independently of the scorer's windows."""
    prompts, answers = twins()
    scorer = get_feedback_scorer("gold-fit", model=str(taught_lm), batch_size=4)
    assert not needs_generation(scorer)
    for kind in ("clean", "truncate"):
        pmi = GoldPMIFeedback(model=str(taught_lm), batch_size=4).score(prompts, answers[kind], [])
        expected = end_probability(taught_lm, prompts, answers[kind]) / (1 + np.exp(-pmi))
        got = scorer.score(prompts, answers[kind], [])
        np.testing.assert_allclose(got, expected, rtol=1e-4)
        assert ((got >= 0) & (got <= 1)).all()


@pytest.mark.parametrize("kind", ["shuffle", "swap", "truncate"])
def test_gold_fit_ranks_every_clean_answer_above_its_corrupted_twin(
    taught_lm: Path, kind: str
) -> None:
    scorer = get_feedback_scorer("gold-fit", model=str(taught_lm), batch_size=4)
    prompts, answers = twins()
    clean = scorer.score(prompts, answers["clean"], [])
    bad = scorer.score(prompts, answers[kind], [])
    assert (clean > 0.5).all(), clean.round(3).tolist()  # on topic and complete
    assert (clean > bad).all(), (kind, clean.round(3).tolist(), bad.round(3).tolist())


def test_gold_fit_of_an_empty_answer_is_nan(taught_lm: Path) -> None:
    scorer = get_feedback_scorer("gold-fit", model=str(taught_lm), batch_size=4)
    out = scorer.score([prompt("Cats", "red")] * 2, ["", answer("Cats", "red")], [])
    assert np.isnan(out[0]) and 0 < out[1] <= 1


def test_end_windows_keep_the_answer_tail_and_score_only_the_marker() -> None:
    tokenizer = byte_tokenizer(chat_template=CHATML)
    chat = ChatFormat(tokenizer)
    long_prompt = [Message("user", "q" * 100)]
    rows, given, alone = end_windows(tokenizer, [long_prompt, None], ["a" * 90 + "z", "ok"], 64)
    assert rows == [0, 1]
    marker = token_ids(tokenizer, [chat.end_of_turn])[0]
    assert all(target == marker for _, target in [*given, *alone])
    full = token_ids(tokenizer, [chat.context(long_prompt)])[0]
    body = token_ids(tokenizer, ["a" * 90 + "z"])[0]
    header = token_ids(tokenizer, [chat.context(None)])[0]
    # 64 = the marker + the prompt's last 32 tokens + the answer's last 31 tokens
    assert given[0][0] == full[-32:] + body[-31:]
    assert alone[0][0] == header + body[-31:]  # same answer tokens after the bare header
    assert given[1][0] == alone[1][0] == header + token_ids(tokenizer, ["ok"])[0]


@pytest.mark.parametrize("name", ["gold-sound", "gold-fit", "gold-pmi", "pmi-gap"])
def test_pmi_feedback_runs_on_the_chosen_lm_backend(name: str) -> None:
    scorer = get_feedback_scorer(
        name, lm_backend="ctranslate2", compute_type="float32", device="cpu", batch_size=2
    )
    backend = scorer.backend_  # type: ignore[attr-defined]
    assert (backend.name, backend.compute_type, backend.device) == ("ctranslate2", "float32", "cpu")
    torch_scorer = get_feedback_scorer(name, dtype="bfloat16", device="cpu")
    assert torch_scorer.backend_.dtype == "bfloat16"  # type: ignore[attr-defined]


def test_ctranslate2_gives_the_torch_pmi_and_fit(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``--lm-backend ctranslate2`` runs the PMI feedback (a random Llama with SmolLM2's
    tokenizer: CTranslate2 converts it, and float32 matches torch)."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed")
    cache = tmp_path_factory.mktemp("ct2")
    prompts, answers = twins()
    for name in ("gold-pmi", "gold-fit", "gold-sound"):
        reference = get_feedback_scorer(name, model=str(tiny_llama), device="cpu")
        fast = get_feedback_scorer(
            name,
            model=str(tiny_llama),
            lm_backend="ctranslate2",
            compute_type="float32",
            cache_dir=str(cache),
        )
        expected = reference.score(prompts, answers["truncate"], [])
        np.testing.assert_allclose(
            fast.score(prompts, answers["truncate"], []), expected, rtol=1e-3, atol=1e-3
        )


# -- gold-sound ------------------------------------------------------------------------------


@pytest.fixture
def short_answers_reordered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twins have 7 words, under the order test's minimum: test the order on them."""
    monkeypatch.setattr(pmi_module, "ORDER_MIN_WORDS", 2)


@pytest.mark.parametrize("kind", ["shuffle", "swap", "truncate"])
def test_gold_sound_ranks_every_clean_answer_above_its_corrupted_twin(
    taught_lm: Path, kind: str, short_answers_reordered: None
) -> None:
    scorer = get_feedback_scorer("gold-sound", model=str(taught_lm), batch_size=4)
    assert not needs_generation(scorer)
    prompts, answers = twins()
    clean = scorer.score(prompts, answers["clean"], [])
    bad = scorer.score(prompts, answers[kind], [])
    assert (clean > 0.5).all(), clean.round(3).tolist()
    assert ((clean >= 0) & (clean <= 1)).all()
    assert (clean > bad).all(), (kind, clean.round(3).tolist(), bad.round(3).tolist())


def test_the_order_test_sees_words_in_no_order(
    taught_lm: Path, short_answers_reordered: None
) -> None:
    """NLL(y') − NLL(y) is large for the answers the model learnt and small for shuffled ones,
    whose reordering is no less likely than they are."""
    backend = get_feedback_scorer("gold-sound", model=str(taught_lm)).backend_  # type: ignore[attr-defined]
    prompts, answers = twins()
    gains = {}
    for kind in ("clean", "shuffle"):
        _, alone, tokens = pmi_nll(
            backend, backend.tokenizer, prompts, answers[kind], max_length=96
        )
        shuffled = reordered_nll(backend, backend.tokenizer, prompts, answers[kind], max_length=96)
        gains[kind] = (shuffled - alone) * tokens
    assert (gains["clean"] > 5).all(), gains["clean"].round(1).tolist()
    assert np.median(gains["shuffle"]) < 0.25 * np.median(gains["clean"]), gains


def test_reordered_is_a_fixed_permutation_of_the_answers_words() -> None:
    text = "one two three four five six seven eight nine"
    out = reordered(text)
    assert out is not None and out != text
    assert sorted(out.split()) == sorted(text.split())
    assert reordered(text) == out  # seeded by the text: the same order every time
    assert reordered("too few words to test here") is None  # < ORDER_MIN_WORDS
    assert reordered("same " * 10) is None  # one distinct word: no other order


def test_sound_probability_multiplies_four_posteriors() -> None:
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    got = sound_probability(
        np.array([0.0, 50.0, 50.0, np.nan]),
        np.array([12.0, 1.0, 1.0, 1.0]),
        np.array([11.0, 3.0, 3.0, 3.0]),
        np.array([np.nan, 0.0, np.nan, np.nan]),
    )
    # row 0: σ(0) · σ(11 − 12 + 1) · σ(12 − 12) · (too short to reorder: no factor)
    assert got[0] == pytest.approx(0.125)
    # rows 1 and 2: on topic, the prompt makes the end e² likelier (prior e), the end is far
    # above the floor; words in no order halve it
    expected = sig(50.0) * sig(3.0) * sig(11.0)
    assert got[2] == pytest.approx(expected)
    assert got[1] == pytest.approx(0.5 * expected)
    assert np.isnan(got[3])


def test_strip_end_markers_drops_only_trailing_special_token_strings() -> None:
    tokenizer = type("T", (), {"all_special_tokens": ["<|endoftext|>", "<|im_end|>"]})()
    assert strip_end_markers("crystals<|endoftext|>", tokenizer) == "crystals"
    assert strip_end_markers("a <|im_end|> <|endoftext|>\n", tokenizer) == "a"
    assert strip_end_markers("x<|endoftext|>y", tokenizer) == "x<|endoftext|>y"
    assert strip_end_markers("no marker \n", tokenizer) == "no marker \n"
    assert strip_end_markers("<|endoftext|>", tokenizer) == "<|endoftext|>"  # nothing left


def test_end_windows_strip_a_trailing_marker_when_asked() -> None:
    tokenizer = byte_tokenizer(chat_template=CHATML)
    p = [prompt("Cats", "red")]
    marked = answer("Cats", "red") + tokenizer.eos_token
    plain = end_windows(tokenizer, p, [answer("Cats", "red")], 64)
    assert end_windows(tokenizer, p, [marked], 64, strip_markers=True) == plain
    assert end_windows(tokenizer, p, [marked], 64) != plain
