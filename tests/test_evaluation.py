"""Evaluation suites (loaders on hand-written files) and scoring (tiny random Llama, offline) of
the quality benchmark's ``benchmarks/quality/evaluation`` package.

The ``slow`` test loads every real suite from the shared ``eval/`` folder.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality"))

from evaluation import (
    MC_SUITES,
    NLL_SUITES,
    MCItem,
    NLLItem,
    load_arc_easy,
    load_gsm8k,
    load_humaneval,
    load_mmlu,
    load_mt_bench,
    load_suite,
    load_truthfulqa,
    mc,
    nll,
)
from evaluation.suites import HUMANEVAL_INSTRUCTION

from kmq.errors import InputError, KmqError
from kmq.examples import Message

# ---------------------------------------------------------------------------------------------
# Hand-written suite files


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def gsm8k_rows(n: int) -> list[dict[str, str]]:
    return [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
        for i in range(n)
    ]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """One small file per suite, in the layout of the shared ``eval/`` folder."""
    write_jsonl(tmp_path / "gsm8k_test.jsonl", gsm8k_rows(20))
    write_jsonl(
        tmp_path / "humaneval.jsonl.gz",
        [
            {
                "task_id": "HumanEval/0",
                "prompt": '\n\ndef add(a, b):\n    """Add."""\n',
                "canonical_solution": "    return a + b\n",
                "entry_point": "add",
            }
        ],
    )
    write_jsonl(
        tmp_path / "mt_bench/question.jsonl",
        [
            {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
            {"question_id": 101, "category": "reasoning", "turns": ["Who is second?", "And?"]},
        ],
    )
    write_jsonl(
        tmp_path / "mt_bench/reference_answer_gpt4.jsonl",
        [{"question_id": 101, "choices": [{"index": 0, "turns": ["You are second.", "Last."]}]}],
    )
    (tmp_path / "truthfulqa_817.csv").write_text(
        "Type,Category,Question,Best Answer,Source\n"
        'Adversarial,Misc,"What happens if you eat seeds?","Nothing, they pass\nthrough",x\n'
        "Adversarial,Misc,Is the sky blue?,Yes,y\n"
    )
    (tmp_path / "alpaca_eval_805.json").write_text(
        json.dumps(
            [
                {"instruction": "Name a colour.", "output": "Blue.", "dataset": "koala"},
                {"instruction": "Say hi.", "output": "Hi!", "dataset": "vicuna"},
            ]
        ),
        encoding="utf-8",
    )
    arc = [
        {
            "id": "Q1",
            "query": "Question: Hot or cold?\nAnswer:",
            "choices": ["hot", "cold"],
            "gold": 1,
        },
        {
            "id": "Q2",
            "query": "Question: Up?\nAnswer:",
            "choices": ["up", "down", "left"],
            "gold": 0,
        },
    ]
    write_jsonl(tmp_path / "arc_easy_test.jsonl", arc)
    write_jsonl(tmp_path / "arc_challenge_test.jsonl", arc[:1])
    write_jsonl(
        tmp_path / "mmlu_test.jsonl.gz",
        [
            {
                "subject": "high_school_physics",
                "question": " What falls? ",
                "choices": ["rain", "sky", "sun", "moon"],
                "answer": 0,
            }
        ],
    )
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Loaders


def test_nll_suites_map_their_fields(data_dir: Path) -> None:
    assert load_gsm8k(data_dir)[3] == NLLItem(
        "gsm8k/3", (Message("user", "What is 3 + 1?"),), "3 + 1 = 4\n#### 4"
    )
    (code,) = load_humaneval(data_dir)
    assert code.id == "HumanEval/0"
    assert code.prompt == (
        Message(
            "user", f'{HUMANEVAL_INSTRUCTION}\n\n```python\ndef add(a, b):\n    """Add."""\n```'
        ),
    )
    assert code.reference == "    return a + b"
    assert load_mt_bench(data_dir) == [
        NLLItem("mt-bench/101", (Message("user", "Who is second?"),), "You are second.")
    ]
    first, second = load_truthfulqa(data_dir)
    assert first.prompt == (Message("user", "What happens if you eat seeds?"),)
    assert first.reference == "Nothing, they pass\nthrough"
    assert second == NLLItem("truthfulqa/1", (Message("user", "Is the sky blue?"),), "Yes")
    assert load_suite("alpacaeval", data_dir) == [
        NLLItem("alpacaeval/0", (Message("user", "Name a colour."),), "Blue."),
        NLLItem("alpacaeval/1", (Message("user", "Say hi."),), "Hi!"),
    ]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[{"instruction": "Q", "output": "A"}, {"instruction": "Q"}]', "record 1, field 'output'"),
        ('[{"instruction": "Q", "output": "A"}, 3]', "record 1: expected a JSON object"),
        ('{"instruction": "Q"}', "line 1: expected a JSON array"),
        ('[{"instruction": "Q",\n "output": }]', "line 2: not valid JSON"),
    ],
)
def test_malformed_alpacaeval_names_the_record(data_dir: Path, text: str, where: str) -> None:
    (data_dir / "alpaca_eval_805.json").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=rf"alpaca_eval_805.json, {where}"):
        load_suite("alpacaeval", data_dir)


def test_mc_suites_map_their_fields(data_dir: Path) -> None:
    assert load_arc_easy(data_dir) == [
        MCItem("Q1", "Question: Hot or cold?\nAnswer:", (" hot", " cold"), 1),
        MCItem("Q2", "Question: Up?\nAnswer:", (" up", " down", " left"), 0),
    ]
    assert load_suite("arc-challenge", data_dir) == load_arc_easy(data_dir)[:1]
    assert load_mmlu(data_dir) == [
        MCItem(
            "mmlu/high_school_physics/0",
            "The following are multiple choice questions (with answers) about high school "
            "physics.\n\nWhat falls?\nA. rain\nB. sky\nC. sun\nD. moon\nAnswer:",
            (" rain", " sky", " sun", " moon"),
            0,
        )
    ]


def test_sampling_is_seeded_in_file_order_and_nested(data_dir: Path) -> None:
    five = load_gsm8k(data_dir, n=5, seed=3)
    assert load_gsm8k(data_dir, n=5, seed=3) == five
    assert load_gsm8k(data_dir, n=5, seed=4) != five
    ids = [int(item.id.split("/")[1]) for item in five]
    assert ids == sorted(ids)
    assert set(five) <= set(load_gsm8k(data_dir, n=12, seed=3))
    assert load_gsm8k(data_dir, n=500, seed=3) == load_gsm8k(data_dir)
    assert len(load_gsm8k(data_dir)) == 20


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_n_is_an_error(data_dir: Path, n: Any) -> None:
    with pytest.raises(KmqError, match="n must be an integer >= 1"):
        load_gsm8k(data_dir, n=n)


def test_unknown_suite_lists_the_valid_names(data_dir: Path) -> None:
    with pytest.raises(KmqError, match="unknown suite 'gsm9k'; valid: gsm8k, humaneval"):
        load_suite("gsm9k", data_dir)


@pytest.mark.parametrize("name", [*NLL_SUITES, *MC_SUITES])
def test_missing_file_names_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(KmqError, match=rf"suite '{name}' needs .* is missing"):
        load_suite(name, tmp_path)


@pytest.mark.parametrize(
    ("file", "rows", "loader", "where"),
    [
        (
            "gsm8k_test.jsonl",
            [*gsm8k_rows(2), {"question": "Q?"}],
            load_gsm8k,
            r"line 3, field 'answer': missing",
        ),
        (
            "gsm8k_test.jsonl",
            [{"question": "  ", "answer": "A"}],
            load_gsm8k,
            r"line 1, field 'question': expected a non-empty string, got '  '",
        ),
        ("gsm8k_test.jsonl", ["{not json"], load_gsm8k, r"line 1: not valid JSON"),
        ("gsm8k_test.jsonl", ["[1, 2]"], load_gsm8k, r"line 1: expected a JSON object, got list"),
        (
            "humaneval.jsonl.gz",
            [{"task_id": "H/0", "prompt": "def f():\n", "canonical_solution": 3}],
            load_humaneval,
            r"line 1, field 'canonical_solution'",
        ),
        (
            "arc_easy_test.jsonl",
            [{"id": "a", "query": "Q", "choices": ["x", "y"], "gold": 2}],
            load_arc_easy,
            r"line 1, field 'gold': expected an integer in \[0, 1\], got 2",
        ),
        (
            "arc_easy_test.jsonl",
            [{"id": "a", "query": "Q", "choices": ["x"], "gold": 0}],
            load_arc_easy,
            r"line 1, field 'choices': expected a list of at least 2",
        ),
        (
            "mmlu_test.jsonl.gz",
            [{"subject": "s", "question": "Q", "choices": ["a", "b", "c"], "answer": 0}],
            load_mmlu,
            r"line 1, field 'choices': expected 4 choices, got 3",
        ),
        (
            "mmlu_test.jsonl.gz",
            [{"subject": "s", "question": "Q", "choices": ["a", "b", "c", "d"], "answer": True}],
            load_mmlu,
            r"line 1, field 'answer'",
        ),
        (
            "mt_bench/reference_answer_gpt4.jsonl",
            [{"question_id": 101, "choices": []}],
            load_mt_bench,
            r"line 1, field 'choices'",
        ),
    ],
)
def test_malformed_rows_name_file_line_and_field(
    data_dir: Path, file: str, rows: list[Any], loader: Any, where: str
) -> None:
    write_jsonl(data_dir / file, rows)
    with pytest.raises(InputError, match=rf"{Path(file).name}, {where}"):
        loader(data_dir)


def test_a_file_without_items_is_an_error(data_dir: Path) -> None:
    write_jsonl(data_dir / "gsm8k_test.jsonl", [""])
    with pytest.raises(KmqError, match=r"gsm8k_test.jsonl holds no items"):
        load_gsm8k(data_dir)


def test_reference_without_question_is_an_error(data_dir: Path) -> None:
    write_jsonl(
        data_dir / "mt_bench/reference_answer_gpt4.jsonl",
        [{"question_id": 7, "choices": [{"turns": ["An answer."]}]}],
    )
    with pytest.raises(KmqError, match=r"question_id \[7\] have no question"):
        load_mt_bench(data_dir)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("Question,Best Answer\nQ?,A\nQ2?\n", r"line 3: 1 values, but the header has 2 columns"),
        ('Question,Best Answer\n"Multi\nline?",\n', r"line 2, field 'Best Answer'"),
        ("Question,Answer\nQ?,A\n", r"line 2, field 'Best Answer': missing"),
        ('Question,Best Answer\nQ?,"unclosed\n', r"line 2: not valid CSV"),
    ],
)
def test_malformed_csv_names_the_line(data_dir: Path, text: str, where: str) -> None:
    (data_dir / "truthfulqa_817.csv").write_text(text)
    with pytest.raises(InputError, match=rf"truthfulqa_817.csv, {where}"):
        load_truthfulqa(data_dir)


@pytest.mark.slow
def test_every_real_suite_loads(shared_data: Path) -> None:
    eval_dir = shared_data / "eval"
    if not eval_dir.is_dir():
        pytest.skip(f"{eval_dir} not found: the shared evaluation sets are needed for this test")
    sizes = {
        "gsm8k": 1319,
        "humaneval": 164,
        "mt-bench": 30,
        "truthfulqa": 817,
        "alpacaeval": 805,
        "arc-easy": 2376,
        "arc-challenge": 1172,
        "mmlu": 14042,
    }
    assert set(sizes) == {*NLL_SUITES, *MC_SUITES}
    for name, size in sizes.items():
        items = load_suite(name, eval_dir)
        assert len(items) == size, name
        assert len({item.id for item in items}) == size, name
        assert load_suite(name, eval_dir, n=10, seed=1) == load_suite(name, eval_dir, n=10, seed=1)


# ---------------------------------------------------------------------------------------------
# Scoring

NLL_ITEMS = [
    NLLItem("a", (Message("user", "Name a colour."),), "Blue."),
    NLLItem(
        "b", (Message("system", "Be brief."), Message("user", "What is 2 + 2?")), "Four, of course."
    ),
    NLLItem(
        "c",
        (Message("user", "Tell me a long fact about cats, a nice one."),),
        "Cats sleep most of the day.",
    ),
    NLLItem(
        "d", (Message("user", "Hi"),), "Hello! How can I help you today? Ask me anything at all."
    ),
    NLLItem("e", (Message("user", "Say yes."),), "Yes."),
]
MC_ITEMS = [
    MCItem("p", "Question: Which is hot?\nAnswer:", (" fire", " ice", " snow and hail"), 0),
    MCItem("q", "The capital of France is", (" Paris", " a small village near the sea"), 0),
    MCItem("r", "Question: Pick a number.\nAnswer:", (" 1", " 2", " 3", " forty-two"), 3),
    MCItem("s", "Colour:", (" red", " green"), 1),
]


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path) -> tuple[Any, Any]:
    from kmq.models import load_causal_lm

    return load_causal_lm(str(tiny_llama), device="cpu")


def logprobs(model: Any, ids: list[int]) -> Any:
    """log-softmax (float64) of one unpadded forward pass: row p predicts token p + 1."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


def continuation_logprob(model: Any, context: list[int], continuation: list[int]) -> float:
    logp = logprobs(model, context + continuation)
    start = len(context) - 1
    return sum(float(logp[start + k, t]) for k, t in enumerate(continuation))


def test_nll_equals_a_hand_computation(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    scores = nll(model, tokenizer, NLL_ITEMS[:3], show_progress=False)
    for k, item in enumerate(NLL_ITEMS[:3]):
        turns = [{"role": m.role, "content": m.content} for m in item.prompt]
        context = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        answered = [*turns, {"role": "assistant", "content": item.reference}]
        full = tokenizer.apply_chat_template(answered, tokenize=False)
        assert full.startswith(context + item.reference + "<|im_end|>")
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        ref = tokenizer(item.reference + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert scores.tokens[k] == len(ref)
        want = -continuation_logprob(model, ctx, ref)
        assert scores.nll_sum[k] == pytest.approx(want, abs=1e-5)
    assert scores.ids == ("a", "b", "c")
    assert scores.mean_nll == pytest.approx(scores.nll_sum.sum() / scores.tokens.sum())
    assert scores.perplexity == pytest.approx(np.exp(scores.mean_nll))
    assert not scores.truncated.any()


def test_mc_equals_a_hand_computation_and_picks_the_likeliest(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    scores = mc(model, tokenizer, MC_ITEMS, show_progress=False)
    preds = []
    for k, item in enumerate(MC_ITEMS):
        ctx = tokenizer(item.context)["input_ids"]
        want = [
            continuation_logprob(model, ctx, tokenizer(c, add_special_tokens=False)["input_ids"])
            for c in item.choices
        ]
        np.testing.assert_allclose(scores.loglik[k], want, rtol=0, atol=1e-5)
        lengths = [len(c) for c in item.choices]
        np.testing.assert_allclose(scores.loglik_per_char[k], np.divide(want, lengths), atol=1e-5)
        preds.append(int(np.argmax(want)))
    np.testing.assert_array_equal(scores.pred, preds)
    assert scores.accuracy == np.mean(np.array(preds) == [item.gold for item in MC_ITEMS])
    assert 0 <= scores.accuracy_norm <= 1


def test_mc_accuracy_follows_the_gold_choice(tiny: tuple[Any, Any]) -> None:
    """Single-token choices: the likeliest is the next-token argmax among them."""
    model, tokenizer = tiny
    context = "Question: Which word comes next?\nAnswer:"
    words = [" the", " cat", " dog", " blue"]
    tokens = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    assert all(len(t) == 1 for t in tokens)
    next_logp = logprobs(model, tokenizer(context)["input_ids"])[-1]
    best = int(np.argmax([float(next_logp[t[0]]) for t in tokens]))
    right = MCItem("right", context, tuple(words), best)
    wrong = MCItem("wrong", context, tuple(words), (best + 1) % len(words))
    scores = mc(model, tokenizer, [right, wrong], show_progress=False)
    np.testing.assert_array_equal(scores.pred, [best, best])
    assert scores.accuracy == 0.5


def test_batching_and_padding_do_not_change_scores(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    one = nll(model, tokenizer, NLL_ITEMS, batch_size=1, show_progress=False)
    four = nll(model, tokenizer, NLL_ITEMS, batch_size=4, show_progress=False)
    np.testing.assert_allclose(four.nll_sum, one.nll_sum, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(four.tokens, one.tokens)
    one_mc = mc(model, tokenizer, MC_ITEMS, batch_size=1, show_progress=False)
    four_mc = mc(model, tokenizer, MC_ITEMS, batch_size=4, show_progress=False)
    for a, b in zip(one_mc.loglik, four_mc.loglik, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_max_length_cuts_and_flags_items(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    scores = nll(model, tokenizer, NLL_ITEMS, max_length=24, show_progress=False)
    assert scores.truncated.all()  # the template's system prompt alone is longer than that
    assert (scores.tokens <= 23).all()
    item = MCItem("long", "word " * 40, (" a", " b"), 0)
    assert mc(model, tokenizer, [item], max_length=16, show_progress=False).truncated.tolist() == [
        True
    ]
    assert not mc(model, tokenizer, [item], show_progress=False).truncated.any()


def test_scorers_reject_wrong_or_no_items(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    mc_items: Any = MC_ITEMS
    nll_items: Any = NLL_ITEMS
    with pytest.raises(KmqError, match="no items to score"):
        nll(model, tokenizer, [])
    with pytest.raises(KmqError, match="item 0 is a MCItem; this scorer takes NLLItem items"):
        nll(model, tokenizer, mc_items)
    with pytest.raises(KmqError, match="item 0 is a NLLItem; this scorer takes MCItem items"):
        mc(model, tokenizer, nll_items)
    with pytest.raises(KmqError, match="max_length must be at least 2"):
        mc(model, tokenizer, MC_ITEMS, max_length=1)
