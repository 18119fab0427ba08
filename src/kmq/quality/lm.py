"""Quality from one causal LM: the response's perplexity, and IFD (Cherry LLM, Superfiltering).

Text (see :class:`kmq.models.ChatFormat`): the context is the prompt turns (system and earlier
turns kept) rendered by the chat template with the assistant header appended; the unconditional
context is the bare assistant header alone; the response is the response text followed by the
template's end-of-turn marker. Context and response are tokenised separately and concatenated,
so the conditional and the unconditional pass score the very same response tokens.

Loss: the mean negative log-likelihood (nats per token) over the response tokens only, in
float64 from the log-softmax of the logits.

Long inputs: a window holds at most ``max_length`` tokens. The response keeps its first
``min(len, max_length - 1)`` tokens; the context keeps as many of its *last* tokens as fit (at
least one, so the first response token has a prediction). Rows cut either way are listed in
the scorer's ``truncated_``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq._imports import require
from kmq.errors import KmqError
from kmq.examples import Message
from kmq.models import ChatFormat

log = logging.getLogger("kmq")

TEMPLATE_VERSION = "chat-context/assistant-header/response+eot/v1"

Window = tuple[list[int], list[int]]  # (context token ids, response token ids)


@dataclass(frozen=True, slots=True)
class NLLResult:
    """One pass over (prompt, response) rows.

    ``nll``: mean NLL of the scored response tokens (nats/token, float64, NaN = not scored);
    ``response_tokens`` / ``context_tokens``: tokens scored / fed before them per row;
    ``truncated``: whether the window cut the row; ``failures``: (row, reason) of the NaN rows.
    """

    nll: np.ndarray
    response_tokens: np.ndarray
    context_tokens: np.ndarray
    truncated: np.ndarray
    failures: list[tuple[int, str]]


def check_settings(max_length: int, batch_size: int) -> None:
    """Raise a :class:`KmqError` unless ``max_length >= 2`` and ``batch_size >= 1``."""
    if max_length < 2:
        raise KmqError(f"max_length must be at least 2 tokens; got {max_length}")
    if batch_size < 1:
        raise KmqError(f"batch_size must be at least 1; got {batch_size}")


def fit_window(context: list[int], response: list[int], max_length: int) -> Window:
    """Cut (context, response) to ``max_length`` tokens: the response keeps its first
    ``min(len, max_length - 1)`` tokens, the context its last tokens that still fit."""
    keep_response = min(len(response), max_length - 1)
    keep_context = min(len(context), max_length - keep_response)
    return context[len(context) - keep_context :], response[:keep_response]


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, with no special tokens added."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def chat_texts(
    chat: ChatFormat,
    prompts: Sequence[Sequence[Message] | None],
    responses: Sequence[str],
) -> tuple[dict[int, tuple[str, str]], list[tuple[int, str]]]:
    """(context, response) text of each row that can be scored, by row; (row, reason) of the
    others: an empty response, or a prompt the chat template cannot render."""
    if len(prompts) != len(responses):
        raise KmqError(
            f"need one response per prompt; got {len(prompts)} prompts "
            f"and {len(responses)} responses"
        )
    texts: dict[int, tuple[str, str]] = {}
    failures: list[tuple[int, str]] = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if not response.strip():
            failures.append((i, "empty response"))
            continue
        try:
            texts[i] = (chat.context(prompt), chat.response(response))
        except KmqError as exc:
            failures.append((i, str(exc)))
    return texts, failures


def score_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    responses: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    show_progress: bool = False,
    desc: str = "scoring responses",
) -> NLLResult:
    """Mean NLL of each ``responses[i]`` after ``prompts[i]`` (``None`` or no turns: after the
    bare assistant header), with token counts, truncation and failures (see the module doc).

    Rows with an empty response, or whose prompt the chat template cannot render, are NaN.
    Rows are sorted by length, batched, right-padded and put back in input order.
    """
    check_settings(max_length, batch_size)

    def run(windows: list[Window]) -> np.ndarray:
        return windows_nll(
            model,
            windows,
            pad_id=tokenizer.pad_token_id,
            batch_size=batch_size,
            show_progress=show_progress,
            desc=desc,
        )

    return score_windows(tokenizer, prompts, responses, max_length=max_length, run=run)


def score_windows(
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    responses: Sequence[str],
    *,
    max_length: int,
    run: Callable[[list[Window]], np.ndarray],
) -> NLLResult:
    """:func:`score_responses` with the forward passes left to ``run``, which maps the rows'
    (context, response) token windows to the mean NLL of each window's response tokens.

    Every inference backend shares this text, tokenisation and windowing, so they score the
    very same tokens."""
    texts, failures = chat_texts(ChatFormat(tokenizer), prompts, responses)
    rows = list(texts)
    context_ids = token_ids(tokenizer, [texts[i][0] for i in rows])
    response_ids = token_ids(tokenizer, [texts[i][1] for i in rows])
    windows = [fit_window(c, r, max_length) for c, r in zip(context_ids, response_ids, strict=True)]
    n = len(responses)
    nll = np.full(n, np.nan, dtype=np.float64)
    if windows:
        nll[rows] = run(windows)
    n_response = np.zeros(n, dtype=np.int64)
    n_context = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    for i, (c, r), full_c, full_r in zip(rows, windows, context_ids, response_ids, strict=True):
        n_context[i], n_response[i] = len(c), len(r)
        truncated[i] = len(c) < len(full_c) or len(r) < len(full_r)
    return NLLResult(nll, n_response, n_context, truncated, failures)


def response_nll(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    responses: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    show_progress: bool = False,
) -> np.ndarray:
    """Mean NLL (nats/token, float64) of each response given its prompt (``None`` =
    unconditional); lower = more likely. NaN for rows that could not be scored.

    See :func:`score_responses` for the counts, truncation and failures behind it.
    """
    return score_responses(
        model,
        tokenizer,
        prompts,
        responses,
        max_length=max_length,
        batch_size=batch_size,
        show_progress=show_progress,
    ).nll


def windows_nll(
    model: Any,
    windows: Sequence[Window],
    *,
    pad_id: int | None,
    batch_size: int,
    show_progress: bool = False,
    desc: str = "scoring responses",
) -> np.ndarray:
    """Mean NLL of each window's response tokens (each needs at least one context token).

    Longest windows go first; ``pad_id`` (positions masked and never scored, so any id works;
    ``None`` = 0) pads each batch on the right.
    """
    torch = require("torch")
    batches = length_batches(windows, batch_size)
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    out = np.empty(len(windows), dtype=np.float64)
    with torch.inference_mode():
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not show_progress):
            out[batch] = _batch_nll(
                model, [windows[i] for i in batch], pad_id or 0, keep_logits=keep_logits
            )
    return out


def length_batches(windows: Sequence[Window], batch_size: int) -> list[np.ndarray]:
    """Row indices of ``windows`` in batches of ``batch_size``, longest windows first."""
    lengths = np.array([len(c) + len(r) for c, r in windows], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_right(windows: Sequence[Window], pad_id: int) -> tuple[Any, Any]:
    """(input ids, attention mask): each window's context + response, right-padded."""
    torch = require("torch")
    width = max(len(c) + len(r) for c, r in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (c, r) in enumerate(windows):
        ids[row, : len(c) + len(r)] = torch.tensor(c + r, dtype=torch.long)
        mask[row, : len(c) + len(r)] = 1
    return ids, mask


def _batch_nll(model: Any, windows: list[Window], pad_id: int, *, keep_logits: bool) -> np.ndarray:
    torch = require("torch")
    ids, mask = pad_right(windows, pad_id)
    width = ids.shape[1]
    # Logits are needed from the position before the earliest response token on.
    first = min(len(c) for c, _ in windows) - 1
    kwargs = {"logits_to_keep": width - first} if keep_logits else {}
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
    offset = width - logits.shape[1]
    out = np.empty(len(windows), dtype=np.float64)
    for row, (c, r) in enumerate(windows):
        start = len(c) - 1 - offset
        predicted = logits[row, start : start + len(r)].double()
        target = torch.tensor(r, dtype=torch.long, device=predicted.device)
        loss = torch.nn.functional.cross_entropy(predicted, target, reduction="none")
        out[row] = float(loss.mean())
    return out
