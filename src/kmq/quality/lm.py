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
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq._imports import require
from kmq.errors import KmqError
from kmq.examples import Example, Message
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


class _LMScorer(ABC):
    """Shared settings, lazy loading and bookkeeping of the LM scorers.

    ``lm_backend`` runs the forward passes (see :mod:`kmq.backends`): ``torch`` (default, the
    reference; ``dtype``, ``device``) or ``ctranslate2`` (``compute_type``, default ``int8``).
    """

    name: str
    direction: str
    truncated_: list[int]
    failures_: list[tuple[int, str]]
    results_: tuple[NLLResult, ...]

    def __init__(
        self,
        model: str = "smollm2",
        *,
        max_length: int = 512,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        dtype: Any = "float32",
        lm_backend: str = "torch",
        compute_type: str | None = None,
        show_progress: bool = True,
    ) -> None:
        from kmq.backends import get_lm_backend

        check_settings(max_length, batch_size)
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.device = device
        self.dtype = dtype
        self.lm_backend = lm_backend
        self.compute_type = compute_type
        self.show_progress = show_progress
        self.backend_ = get_lm_backend(
            lm_backend,
            model,
            max_length=max_length,
            batch_size=batch_size,
            cache_dir=cache_dir,
            device=device,
            dtype=dtype,
            compute_type=compute_type,
            show_progress=show_progress,
        )
        self._identity: str | None = None

    def fingerprint(self) -> str:
        if self._identity is None:
            self._identity = self.backend_.fingerprint()
        return f"{self.name}/{self._identity}/{TEMPLATE_VERSION}"

    def score(self, examples: Sequence[Example]) -> np.ndarray:
        """``<name>_score`` of each example's last response to its prompt (float64, NaN =
        not scored). Sets ``truncated_`` (rows the window cut), ``failures_`` ((row, reason)
        of the NaN rows) and ``results_`` (the passes run); rows count from 0 in this call."""
        prompts = [ex.prompt for ex in examples]
        responses = [ex.response for ex in examples]
        self.backend_.batch_size = self.batch_size
        self.results_ = self._passes(prompts, responses)
        self.truncated_ = sorted(
            {int(i) for r in self.results_ for i in np.flatnonzero(r.truncated)}
        )
        reasons: dict[int, str] = {}
        for result in self.results_:
            for i, reason in result.failures:
                reasons.setdefault(i, reason)
        self.failures_ = sorted(reasons.items())
        self._log_summary(len(examples))
        return self._combine(self.results_)

    def _pass(
        self, prompts: Sequence[Sequence[Message] | None], responses: Sequence[str], desc: str
    ) -> NLLResult:
        return self.backend_.score(prompts, responses, desc=desc)

    @abstractmethod
    def _passes(
        self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]
    ) -> tuple[NLLResult, ...]:
        """The NLL passes this score needs."""

    @abstractmethod
    def _combine(self, results: tuple[NLLResult, ...]) -> np.ndarray:
        """The score from the passes' NLLs."""

    def _log_summary(self, n: int) -> None:
        if self.failures_:
            i, reason = self.failures_[0]
            log.warning(
                "%s: %d of %d rows are NaN; first: row %d: %s",
                self.name,
                len(self.failures_),
                n,
                i,
                reason,
            )
        if self.truncated_:
            log.info(
                "%s: %d of %d rows were cut to max_length=%d tokens",
                self.name,
                len(self.truncated_),
                n,
                self.max_length,
            )


class PerplexityScorer(_LMScorer):
    """``perplexity_score = −mean NLL(y|x) = −log PPL(y|x)``: how likely the LM finds the
    response y after the prompt x. Range (−∞, 0]; higher = more likely response.

    ``model`` is ``smollm2`` (default, offline) or a causal-LM folder; see the module doc for
    the text, the loss and the ``max_length`` window.
    """

    name = "perplexity"
    direction = (
        "higher = the LM finds the response more likely given the prompt "
        "(minus the mean token NLL, -log PPL(y|x)); range (-inf, 0]"
    )

    def _passes(
        self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]
    ) -> tuple[NLLResult, ...]:
        return (self._pass(prompts, responses, "perplexity"),)

    def _combine(self, results: tuple[NLLResult, ...]) -> np.ndarray:
        return -results[0].nll


class _TwoPassScorer(_LMScorer):
    """Scores from NLL(y|x) (with the prompt) and NLL(y) (after the bare assistant header);
    both passes score the same response tokens (see the module doc)."""

    def _passes(
        self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]
    ) -> tuple[NLLResult, ...]:
        conditional = self._pass(prompts, responses, f"{self.name}: with prompt")
        unconditional = self._pass([None] * len(responses), responses, f"{self.name}: no prompt")
        # Without a prompt both passes score the same window: NLL(y|x) = NLL(y) exactly (the
        # batches differ, so the two forward passes may differ in the last bits).
        no_prompt = [i for i, prompt in enumerate(prompts) if not prompt]
        conditional.nll[no_prompt] = unconditional.nll[no_prompt]
        return conditional, unconditional


class IFDScorer(_TwoPassScorer):
    """``ifd_score``: the Instruction-Following Difficulty of Cherry LLM (Li et al. 2023;
    Superfiltering), in its authors' direction.

    ``IFD = PPL(y|x) / PPL(y) = exp(mean NLL(y|x) − mean NLL(y))``: how much of the response's
    difficulty the prompt leaves; the unconditional NLL(y) is the response after the bare
    assistant header. The authors keep the *highest* IFD (the prompt helps little: hard
    examples) and drop rows with IFD ≥ 1 (the prompt does not help at all: the answer does not
    follow from it). So ``ifd_score = IFD`` when IFD < 1 and ``0`` (below every kept row) when
    IFD ≥ 1. Range [0, 1); higher = harder to follow but still helped by the prompt.

    Until kmq 0.1, ``ifd`` was −log IFD (higher = easier); that score is now ``pmi``
    (:class:`PMIScorer`). ``model`` is ``smollm2`` (default, offline) or a causal-LM folder.
    """

    name = "ifd"
    direction = (
        "higher = harder: the prompt explains less of the response (IFD = PPL(y|x)/PPL(y), "
        "Cherry LLM's direction); range [0, 1), rows with IFD >= 1 (prompt does not help) get 0"
    )

    def fingerprint(self) -> str:
        # kmq 0.1's ``ifd`` (now ``pmi``) had the same name: the key says which score this is
        return f"{super().fingerprint()}/score=PPL(y|x)/PPL(y), 0 when >= 1"

    def _combine(self, results: tuple[NLLResult, ...]) -> np.ndarray:
        conditional, unconditional = results
        ifd = np.exp(conditional.nll - unconditional.nll)
        return np.where(ifd < 1, ifd, np.where(np.isnan(ifd), np.nan, 0.0))


class PMIScorer(_TwoPassScorer):
    """``pmi_score = mean NLL(y) − mean NLL(y|x) = −log IFD``: the per-token pointwise mutual
    information between prompt and response under the LM (how many nats per token the prompt
    saves). Range (−∞, ∞); higher = the prompt makes the response more likely (easy,
    instruction-following rows); > 0 exactly when IFD < 1. This is what kmq called ``ifd``
    until 0.1; ranking by it is the reverse of Cherry LLM's (:class:`IFDScorer`).
    """

    name = "pmi"
    direction = (
        "higher = the prompt makes the response more likely (mean NLL(y) - mean NLL(y|x) "
        "= -log IFD); range (-inf, inf), > 0 when IFD < 1"
    )

    def _combine(self, results: tuple[NLLResult, ...]) -> np.ndarray:
        conditional, unconditional = results
        return unconditional.nll - conditional.nll
