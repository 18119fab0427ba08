"""Token budgets (--budget-tokens, kmq.select(budget_tokens=...)) and the token / turn / length
statistics of the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmq.cli import main
from kmq.errors import KmqError, ParameterError
from kmq.examples import Example, Message
from kmq.formats import load_pool
from kmq.outputs import Manifest
from kmq.pipeline import select, select_file
from kmq.selectors import get_selector
from kmq.token_budget import select_tokens
from kmq.tokens import load_token_counter
from tests.conftest import make_blobs
from tests.test_pipeline import config

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer folder whose tokens are the whitespace-separated pieces of a text (no chat
    template, so kmq's fallback template renders the conversations)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    model = tokenizers.models.WordLevel({"[UNK]": 0, "</s>": 1}, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>"
    )
    folder = tmp_path_factory.mktemp("word-tokenizer")
    fast.save_pretrained(folder)
    return folder


def write_varied(path: Path, n: int = 60) -> None:
    """A messages JSONL pool whose answers run from 1 to 9 words, with two sources."""
    rows = []
    for i in range(n):
        answer = " ".join(WORDS[j % len(WORDS)] for j in range(i % 9 + 1))
        rows.append(
            {
                "id": f"r-{i}",
                "source": "short" if i % 3 else "long",
                "messages": [
                    {"role": "user", "content": f"question {i} {WORDS[i % 8]}"},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_counter_counts_the_rendered_conversation(word_tokenizer: Path) -> None:
    counter = load_token_counter(str(word_tokenizer))
    example = Example("a", (Message("user", "one two"), Message("assistant", "three")), 0)
    text = counter.render(example)
    assert text.startswith("### User:\none two")
    assert "### Assistant:\nthree</s>" in text
    words = text.replace("</s>", " </s> ").split()  # the special token is one token of its own
    assert counter.count([example, example]).tolist() == [len(words)] * 2


def test_unknown_tokenizer_is_refused() -> None:
    pytest.importorskip("transformers")
    with pytest.raises(KmqError, match="neither 'smollm2' nor a local tokenizer folder"):
        load_token_counter("no/such-tokenizer")


def token_pool(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, _ = make_blobs(n, 6, seed=seed)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 400, size=n)
    labels = np.argmin(((x[:, None, :] - x[None, :6, :]) ** 2).sum(-1), axis=1)
    return x, tokens, labels


@given(
    budget=st.integers(1, 40_000),
    method=st.sampled_from(["kmq", "km-random", "km-closest", "random", "k-center"]),
    allocation=st.sampled_from(["balanced", "proportional", "equal"]),
    seed=st.integers(0, 5),
)
def test_token_budget_is_never_exceeded(
    budget: int, method: str, allocation: str, seed: int
) -> None:
    x, tokens, labels = token_pool(seed=seed)
    options = {"allocation": allocation} if method.startswith("km") else {}
    selector = get_selector(method, **options)
    exclude = np.zeros(len(x), dtype=bool)
    exclude[::7] = True
    quality = np.random.default_rng(seed).random(len(x))
    result, spent = select_tokens(
        selector, x, budget, tokens, labels=labels, quality=quality, exclude=exclude, seed=seed
    )
    picked = result.indices
    assert len(set(picked.tolist())) == len(picked)
    assert not exclude[picked].any()
    assert spent.selected_tokens == int(tokens[picked].sum()) <= budget
    if spent.quotas is not None:  # clustered: no row left out would still fit
        quotas = int(spent.quotas.sum())  # 'equal' leaves budget mod k to the remainder
        assert quotas == budget if allocation != "equal" else quotas <= budget
        assert (spent.in_quota <= spent.quotas).all()
        left = np.setdiff1d(np.flatnonzero(~exclude), picked)
        assert len(left) == 0 or tokens[left].min() > budget - spent.selected_tokens


def test_balanced_token_quotas_even_out_clusters_of_long_and_short_rows() -> None:
    x, _ = make_blobs(400, 2, seed=3)
    labels = (x[:, 0] > np.median(x[:, 0])).astype(np.int64)
    tokens = np.where(labels == 0, 20, 200)  # cluster 1's rows are 10× longer
    result, spent = select_tokens(get_selector("kmq"), x, 8_000, tokens, labels=labels)
    per_cluster = np.bincount(labels[result.indices], weights=tokens[result.indices])
    assert per_cluster.tolist() == [4_000, 4_000]  # equal tokens, 200 vs 20 rows
    assert spent.quotas is not None and spent.quotas.tolist() == [4_000, 4_000]


def test_uniform_tokens_give_kmqs_row_selection() -> None:
    """With every row of t tokens and b·t tokens split evenly, each cluster takes the first
    b/k rows of its own draw: the row budget's picks."""
    x, _ = make_blobs(240, 4, seed=1)
    labels = np.argmin(((x[:, None, :] - x[None, :4, :]) ** 2).sum(-1), axis=1)
    quality = np.random.default_rng(1).random(240)
    tokens = np.full(240, 30)
    rows = select(x, 20, labels=labels, quality=quality, seed=4)
    by_tokens = select(
        x, budget_tokens=20 * 30, tokens=tokens, labels=labels, quality=quality, seed=4
    )
    assert sorted(by_tokens.indices.tolist()) == sorted(rows.indices.tolist())
    assert "token budget 600: the picks hold 600 tokens" in by_tokens.notes


def test_select_api_budget_errors() -> None:
    x, tokens, labels = token_pool(60)
    with pytest.raises(ParameterError, match="exactly one"):
        select(x, 5, budget_tokens=100, tokens=tokens, labels=labels)
    with pytest.raises(ParameterError, match="tokens"):
        select(x, budget_tokens=100, labels=labels)
    with pytest.raises(KmqError, match="exceeds the"):
        select(x, budget_tokens=10**9, tokens=tokens, labels=labels)
    with pytest.raises(ParameterError, match="quality_candidates"):
        select(x, budget_tokens=100, tokens=tokens, labels=labels, quality_candidates=4)


def test_select_file_with_a_token_budget_records_statistics(
    tmp_path: Path, word_tokenizer: Path
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_varied(pool)
    cfg = config(tmp_path, pool, budget_tokens=150, tokenizer=str(word_tokenizer), k=3)
    run = select_file(cfg)
    counter = load_token_counter(str(word_tokenizer))
    tokens = counter.count(run.pool.examples)
    stats = Manifest.read(run.out).statistics
    assert stats is not None
    picked = int(tokens[run.result.indices].sum())
    assert picked <= 150
    assert stats["selected"]["tokens"] == picked
    assert stats["pool"]["tokens"] == int(tokens.sum())
    assert stats["tokenizer"] == str(word_tokenizer.resolve())
    budget = stats["token_budget"]
    assert budget["budget_tokens"] == 150 and budget["selected_tokens"] == picked
    assert sum(budget["quota_tokens"]) == 150
    assert set(stats["by_source"]) == {"long", "short"}
    assert sum(s["selected"]["rows"] for s in stats["by_source"].values()) == len(run.result)
    assert [c["cluster"] for c in stats["by_cluster"]] == [0, 1, 2]
    assert sum(c["selected"]["tokens"] for c in stats["by_cluster"]) == picked
    assert stats["pool"]["turns_mean"] == 2.0


def test_statistics_without_a_tokenizer_have_turns_and_lengths(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_varied(pool)
    stats = select_file(config(tmp_path, pool)).manifest.statistics
    assert stats is not None and stats["tokenizer"] is None and stats["token_budget"] is None
    assert "tokens" not in stats["pool"]
    assert stats["selected"]["rows"] == 12 and stats["pool"]["characters_mean"] > 0


def test_cli_budget_tokens_and_inspect(
    tmp_path: Path, word_tokenizer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_varied(pool)
    out = tmp_path / "out"
    argv = ["select", str(pool), "--out", str(out), "--budget-tokens", "200"]
    argv += ["--tokenizer", str(word_tokenizer), "--method", "random", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "tokens" in shown and "of 200" in shown
    assert "per source: selected / pool" in shown


def test_budget_tokens_flag_is_checked(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_varied(pool)
    with pytest.raises(ParameterError, match="budget_tokens"):
        select_file(config(tmp_path, pool, budget_tokens=0))


@pytest.mark.model
def test_smollm2_tokenizer_counts_chatml() -> None:
    pytest.importorskip("transformers")
    try:
        counter = load_token_counter("smollm2")
    except KmqError as exc:
        pytest.skip(str(exc))
    example = Example("a", (Message("user", "Hi"), Message("assistant", "Hello")), 0)
    text = counter.render(example)
    assert "<|im_start|>user\nHi<|im_end|>" in text
    assert counter.count([example])[0] == len(
        counter.tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def test_dry_run_counts_the_conversation_tokens(tmp_path: Path, word_tokenizer: Path) -> None:
    from kmq.dryrun import dry_run, dry_run_lines

    pool = tmp_path / "pool.jsonl"
    write_varied(pool)
    report = dry_run(config(tmp_path, pool, budget_tokens=100, tokenizer=str(word_tokenizer)))
    counter = load_token_counter(str(word_tokenizer))
    expected = int(counter.count(load_pool(str(pool)).examples).sum())
    assert report["conversation_tokens"] == expected
    assert f"conversations: {expected:,} tokens" in "\n".join(dry_run_lines(report))


def test_counts_are_cached_by_tokenizer_and_text(tmp_path: Path, word_tokenizer: Path) -> None:
    counter = load_token_counter(str(word_tokenizer))
    rows = [
        Example(str(i), (Message("user", "a " * i), Message("assistant", "b")), i) for i in range(5)
    ]
    first = counter.count(rows, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokens").iterdir())) == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenised again")

    cached = load_token_counter(str(word_tokenizer))
    render = cached.tokenizer.apply_chat_template
    cached.tokenizer = type("Tokenizer", (), {"apply_chat_template": render, "__call__": refuse})()
    assert cached.count(rows, cache_dir=tmp_path).tolist() == first.tolist()
    changed = [*rows[:4], Example("4", (Message("user", "new"), Message("assistant", "b")), 4)]
    assert counter.count(changed, cache_dir=tmp_path)[4] != first[4]
    assert len(list((tmp_path / "tokens").iterdir())) == 2
