"""The LM quality scorers: perplexity, IFD and PMI of the response, from one causal LM run by a
backend of :mod:`kmq.backends` (how rows become windows and NLLs: :mod:`kmq.quality.lm`)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kmq.backends import backend_of
from kmq.examples import Example, Message
from kmq.quality.lm import (
    TEMPLATE_VERSION,
    NLLResult,
    check_settings,
)

log = logging.getLogger("kmq")


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
        self.backend_ = backend_of(
            self,
            lm_backend,
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


class PMITotalScorer(PMIScorer):
    """``pmi-total_score = Σ_t [log p(y_t | x, y_<t) − log p(y_t | y_<t)] = log p(y|x) − log p(y)``:
    the pointwise mutual information between prompt and response in nats, summed over the
    response tokens (``pmi`` × the response's token count). How much the prompt tells about the
    whole answer: an answer unrelated to its prompt (swapped), scrambled (word-shuffled) or cut
    short (truncated) explains less of it than a complete, relevant one, so it scores low.
    Range (−∞, ∞); 0 for a row without a prompt; a window cut at ``max_length`` sums only the
    tokens it scored. Longer relevant answers score higher: with kMQ's balanced per-cluster quotas
    the source mix stays that of the clusters (``benchmarks/results/selection_lm.md``).
    """

    name = "pmi-total"
    direction = (
        "higher = the prompt explains more of the whole response (log p(y|x) - log p(y), nats "
        "summed over the response tokens); range (-inf, inf), 0 without a prompt"
    )

    def _combine(self, results: tuple[NLLResult, ...]) -> np.ndarray:
        return super()._combine(results) * results[0].response_tokens
