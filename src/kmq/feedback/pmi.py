"""``gold-pmi`` and ``pmi-gap`` feedback: how much an answer says about its own prompt.

PMI(x; y) = NLL(y) − NLL(y | x), in nats summed over the answer's tokens (its end-of-turn
marker included): the log-likelihood the prompt adds to the answer under a reference causal LM
(default SmolLM2). It is the −log IFD of the ``ifd`` quality score (Cherry LLM) times the
answer's length, i.e. the answer's total information about its prompt. Each kind of bad gold
answer loses it:

- words shuffled: the prompt no longer predicts the tokens in that order;
- swapped for another row's answer: fluent, but the prompt explains none of it (PMI ≈ 0 or < 0);
- truncated: the missing rest carried information, and the end-of-turn marker comes where the
  prompt says the answer is not over.

Summed, not per token: a per-token mean keeps a truncated answer's first sentence (often the
part that restates the prompt) at full value.

Windows: PMI needs the prompt, so a long row is not cut like the quality scorers' windows
(which keep the whole answer first). The prompt keeps its last ``min(len, max_length // 2)``
tokens, the answer its first tokens in the rest of the ``max_length``-token window; the
unconditional pass scores the very same answer tokens after the bare assistant header. The
default window is short (96 tokens): the sum then covers at most the answer's first 48-95
tokens, so a cluster of long answers does not outweigh one of shorter complete answers merely
by length, and a round costs two passes of at most 96 tokens per trained row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kmq.examples import Message
from kmq.feedback.base import gap

Window = tuple[list[int], list[int]]


def pmi_windows(
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    answers: Sequence[str],
    max_length: int,
) -> tuple[list[int], list[Window], list[Window]]:
    """Rows that can be scored, and their (context, answer) token windows with the prompt and
    with the bare assistant header (see the module doc); empty answers and prompts the chat
    template cannot render are left out."""
    from kmq.models import ChatFormat
    from kmq.quality.lm import chat_texts, token_ids

    chat = ChatFormat(tokenizer)
    texts, _ = chat_texts(chat, prompts, answers)
    rows = list(texts)
    contexts = token_ids(tokenizer, [texts[i][0] for i in rows])
    responses = token_ids(tokenizer, [texts[i][1] for i in rows])
    header = token_ids(tokenizer, [chat.context(None)])[0]
    given: list[Window] = []
    alone: list[Window] = []
    for context, response in zip(contexts, responses, strict=True):
        keep = min(len(response), max_length - min(len(context), max_length // 2))
        room = max_length - keep
        given.append((context[len(context) - min(len(context), room) :], response[:keep]))
        alone.append((header[len(header) - min(len(header), room) :], response[:keep]))
    return rows, given, alone


def pmi_nll(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    answers: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NLL(y | x), NLL(y), scored tokens) per row: mean nats per token over the same answer
    tokens, NaN (and 0 tokens) for rows that cannot be scored."""
    from kmq.quality.lm import windows_nll

    rows, given, alone = pmi_windows(tokenizer, prompts, answers, max_length)
    n = len(answers)
    out = np.full((2, n), np.nan)
    tokens = np.zeros(n)
    if rows:
        both = windows_nll(
            model, [*given, *alone], pad_id=tokenizer.pad_token_id, batch_size=batch_size
        )
        out[0, rows], out[1, rows] = both[: len(rows)], both[len(rows) :]
        tokens[rows] = [len(r) for _, r in given]
    return out[0], out[1], tokens


class _PMIFeedback:
    """Lazy reference LM and the batched PMI of (prompt, answer) rows under it."""

    def __init__(
        self,
        *,
        model: str = "smollm2",
        max_length: int = 96,
        batch_size: int = 8,
        cache_dir: str | None = None,
    ) -> None:
        from kmq.quality.lm import check_settings

        check_settings(max_length, batch_size)
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._lm: tuple[Any, Any] | None = None

    def pmi(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> np.ndarray:
        """PMI(x; y) in nats, summed over each answer's scored tokens (see the module doc);
        NaN for an empty answer or an unrenderable prompt."""
        from kmq.models import load_causal_lm

        if self._lm is None:
            self._lm = load_causal_lm(self.model, cache_dir=self.cache_dir)
        model, tokenizer = self._lm
        given, alone, tokens = pmi_nll(
            model,
            tokenizer,
            prompts,
            answers,
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        return (alone - given) * tokens


class GoldPMIFeedback(_PMIFeedback):
    """S = PMI(x; y_gold): how much the gold answer says about its prompt (no generation).

    Range (−∞, ∞) in nats; higher = the gold answer is a fuller, more specific answer to its
    prompt, so its cluster deserves more weight; ≈ 0 or below for an answer unrelated to its
    prompt. It judges the gold answer only, as the paper's reward model judges it, and needs
    no generated answer: the loop skips generation with it. Two passes of the reference LM
    per trained row.
    """

    name = "gold-pmi"
    direction = "higher = gold answer tells more about its prompt (nats, summed); (-inf, inf)"
    needs_generation = False

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray:
        return self.pmi(prompts, gold)


class PMIGapFeedback(_PMIFeedback):
    """Eq. 4 with PMI as the reward: S = PMI(x; y_gold) − PMI(x; y_gen).

    Range (−∞, ∞) in nats; higher = the gold answer tells more about its prompt than the
    model's own answer does (more to learn there). A bad gold answer (shuffled, swapped,
    truncated) has a low PMI, so S falls. Needs the generations; four passes of the reference
    LM per trained row.
    """

    name = "pmi-gap"
    direction = "higher = gold answer tells more about its prompt than the generation; nats"
    needs_generation = True

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        gold: Sequence[str],
        generated: Sequence[str],
    ) -> np.ndarray:
        return gap(self.pmi, prompts, gold, generated)
