"""Score a causal LM on evaluation items: reference NLL and multiple-choice log-likelihood.

:func:`nll` (prompt, reference) items: the reference's negative log-likelihood given the prompt,
with the tokenizer's chat template (the prompt as the user turn, the reference as the assistant
turn followed by the end-of-turn marker; loss on the reference tokens only). The text, the
``max_length`` window and the length-sorted, right-padded batches are those of
:mod:`kmq.quality.lm`. A suite's score is token-weighted: the total NLL over the total token
count (:attr:`NLLScores.mean_nll`), so long references weigh more than short ones.

:func:`mc` (context, choices) items: the log-likelihood of each choice continuation after the
context, in **plain text** (no chat template), as lm-eval-harness scores loglikelihood tasks.
The fine-tuned models are chat models, but a multiple-choice context is not a request a chat
turn would answer with the bare choice text; plain text keeps the scores comparable with
published lm-eval numbers, and the chat format is measured by the NLL suites. The context is
tokenised with the tokenizer's default special tokens (a BOS where it adds one), each choice
without; the two are tokenised separately and concatenated, so every choice of an item follows
the very same context tokens. A window longer than ``max_length`` keeps the choice's first
tokens and the context's last ones (see :func:`kmq.quality.lm.fit_window`).

Both run on the model's device, in batches of ``batch_size`` windows sorted by length, with a
tqdm progress bar when ``show_progress``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from kmq.errors import KmqError
from kmq.quality.lm import check_settings, fit_window, score_responses, token_ids, windows_nll

from .suites import MCItem, NLLItem


@dataclass(frozen=True, slots=True)
class NLLScores:
    """Per-item reference NLL.

    ``nll_sum``: summed NLL of each item's scored reference tokens (nats, float64, >= 0; lower =
    the model finds the reference more likely); ``tokens``: how many tokens were scored;
    ``truncated``: whether ``max_length`` cut the item (its prompt from the left or its
    reference from the right).
    """

    ids: tuple[str, ...]
    nll_sum: np.ndarray
    tokens: np.ndarray
    truncated: np.ndarray

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean NLL of the suite: total NLL / total tokens (nats per token)."""
        return float(self.nll_sum.sum() / self.tokens.sum())

    @property
    def perplexity(self) -> float:
        """``exp(mean_nll)``: the suite's token-weighted perplexity, >= 1; lower = better."""
        return float(np.exp(self.mean_nll))


@dataclass(frozen=True, slots=True)
class MCScores:
    """Per-item choice log-likelihoods and predictions.

    ``loglik[i][j]``: summed log-probability of item i's choice j given its context (nats, <= 0;
    higher = more likely); ``loglik_per_char[i][j]``: the same divided by the choice's length in
    characters, its leading space included (lm-eval-harness's ``acc_norm``); ``gold``: the right
    choice per item; ``truncated``: whether ``max_length`` cut any of the item's windows.
    """

    ids: tuple[str, ...]
    loglik: tuple[np.ndarray, ...]
    loglik_per_char: tuple[np.ndarray, ...]
    gold: np.ndarray
    truncated: np.ndarray

    @property
    def pred(self) -> np.ndarray:
        """Argmax of ``loglik`` per item (the first choice on a tie)."""
        return np.array([int(np.argmax(s)) for s in self.loglik], dtype=np.int64)

    @property
    def pred_norm(self) -> np.ndarray:
        """Argmax of ``loglik_per_char`` per item (the first choice on a tie)."""
        return np.array([int(np.argmax(s)) for s in self.loglik_per_char], dtype=np.int64)

    @property
    def accuracy(self) -> float:
        """Fraction of items whose ``pred`` is the gold choice, in [0, 1]; higher = better."""
        return float(np.mean(self.pred == self.gold))

    @property
    def accuracy_norm(self) -> float:
        """Fraction of items whose ``pred_norm`` is the gold choice, in [0, 1]."""
        return float(np.mean(self.pred_norm == self.gold))


def _check_items(items: Sequence[Any], kind: type) -> None:
    if not items:
        raise KmqError(f"no items to score; pass at least one {kind.__name__}")
    wrong = next((i for i, item in enumerate(items) if not isinstance(item, kind)), None)
    if wrong is not None:
        got = type(items[wrong]).__name__
        raise KmqError(f"item {wrong} is a {got}; this scorer takes {kind.__name__} items")


def nll(
    model: Any,
    tokenizer: Any,
    items: Sequence[NLLItem],
    *,
    max_length: int = 1024,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "nll",
) -> NLLScores:
    """Summed NLL and token count of each item's reference given its prompt (see the module
    doc); aggregate a suite with :attr:`NLLScores.mean_nll`."""
    _check_items(items, NLLItem)
    result = score_responses(
        model,
        tokenizer,
        [item.prompt for item in items],
        [item.reference for item in items],
        max_length=max_length,
        batch_size=batch_size,
        show_progress=show_progress,
        desc=desc,
    )
    if result.failures:
        row, reason = result.failures[0]
        raise KmqError(f"could not score item {items[row].id!r}: {reason}")
    return NLLScores(
        ids=tuple(item.id for item in items),
        nll_sum=result.nll * result.response_tokens,
        tokens=result.response_tokens,
        truncated=result.truncated,
    )


def mc(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    *,
    max_length: int = 1024,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "mc",
) -> MCScores:
    """Log-likelihood of every choice of every item after its context, in plain text (see the
    module doc); predictions and accuracy are properties of the result."""
    _check_items(items, MCItem)
    check_settings(max_length, batch_size)
    contexts = [list(ids) for ids in tokenizer([item.context for item in items])["input_ids"]]
    owners = [i for i, item in enumerate(items) for _ in item.choices]
    texts = [choice for item in items for choice in item.choices]
    full = [(contexts[i], ids) for i, ids in zip(owners, token_ids(tokenizer, texts), strict=True)]
    empty = next((k for k, (c, r) in enumerate(full) if not c or not r), None)
    if empty is not None:
        part = "context" if not full[empty][0] else f"choice {texts[empty]!r}"
        raise KmqError(f"item {items[owners[empty]].id!r}: the {part} has no tokens")
    windows = [fit_window(c, r, max_length) for c, r in full]
    mean_nll = windows_nll(
        model,
        windows,
        pad_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        show_progress=show_progress,
        desc=desc,
    )
    counts = np.array([len(r) for _, r in windows], dtype=np.float64)
    flat = -mean_nll * counts
    per_char = flat / np.array([len(t) for t in texts], dtype=np.float64)
    cut = np.array([w != f for w, f in zip(windows, full, strict=True)], dtype=bool)
    bounds = np.cumsum([0, *(len(item.choices) for item in items)])
    spans = list(pairwise(bounds))
    return MCScores(
        ids=tuple(item.id for item in items),
        loglik=tuple(flat[a:b] for a, b in spans),
        loglik_per_char=tuple(per_char[a:b] for a, b in spans),
        gold=np.array([item.gold for item in items], dtype=np.int64),
        truncated=np.array([bool(cut[a:b].any()) for a, b in spans], dtype=bool),
    )
