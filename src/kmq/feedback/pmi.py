"""``gold-sound``, ``gold-fit``, ``gold-pmi`` and ``pmi-gap`` feedback: how well an answer fits
its own prompt.

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

Measured on planted noise (``benchmarks/results/corruption.md``), the summed PMI starves swapped
answers, shuffled ones only partly and truncated ones not at all: a first sentence keeps most
of the information about the prompt. ``gold-fit`` adds a third pass, the probability of the
end-of-turn marker right after the whole answer (:func:`end_windows`), and scores
σ(PMI) · P(end | x, y) (:class:`GoldFitFeedback`). That end probability is partly a matter of
style, so on a clean pool ``gold-fit`` moves the weight off GSM8K and T0 onto code.
``gold-sound`` (the loop's default, :class:`GoldSoundFeedback`) replaces it with contrasts that
cancel style: the end's probability with and without the prompt, a floor any complete answer
clears, and the answer's word order against a random reordering of its words (five passes).

Every pass goes through :func:`kmq.backends.get_lm_backend` (``lm_backend``, ``dtype``,
``compute_type``, ``device``: ``--lm-backend``, ``--lm-dtype``, ``--lm-compute-type`` and
``--device`` on the command line); the windows are built here with the model's tokenizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kmq.examples import Message
from kmq.feedback.base import Prompts, Texts, gap

if TYPE_CHECKING:
    from kmq.backends import LMBackend

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


def end_windows(
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    answers: Sequence[str],
    max_length: int,
    *,
    strip_markers: bool = False,
) -> tuple[list[int], list[Window], list[Window]]:
    """Rows that can be scored, and windows whose scored tokens are the end-of-turn marker after
    the whole answer: (prompt + answer, marker) and (bare assistant header + answer, marker).

    The marker's tokens stay; the answer keeps its *last* tokens, at most ``max_length`` minus
    the marker minus ``min(len(prompt), max_length // 2)``; the prompt (or header) its last
    tokens in the rest. Both windows end in the very same answer tokens. ``strip_markers``
    first drops the special-token strings that end an answer (:func:`strip_end_markers`).
    """
    from kmq.models import ChatFormat
    from kmq.quality.lm import chat_texts, token_ids

    if strip_markers:
        answers = [strip_end_markers(a, tokenizer) for a in answers]
    chat = ChatFormat(tokenizer)
    texts, _ = chat_texts(chat, prompts, answers)
    rows = list(texts)
    marker = token_ids(tokenizer, [chat.end_of_turn])[0]
    contexts = token_ids(tokenizer, [texts[i][0] for i in rows])
    bodies = token_ids(tokenizer, [answers[i] for i in rows])
    header = token_ids(tokenizer, [chat.context(None)])[0]
    given: list[Window] = []
    alone: list[Window] = []
    room = max_length - len(marker)
    for context, body in zip(contexts, bodies, strict=True):
        keep = max(0, min(len(body), room - min(len(context), max_length // 2)))
        tail = body[len(body) - keep :]
        rest = room - keep
        given.append((context[len(context) - min(len(context), rest) :] + tail, marker))
        alone.append((header[len(header) - min(len(header), rest) :] + tail, marker))
    return rows, given, alone


def strip_end_markers(answer: str, tokenizer: Any) -> str:
    """``answer`` without the special-token strings (and whitespace) that end it, such as a
    literal ``<|endoftext|>`` after every T0 answer of ``mix-small``: such a marker already says
    the answer ends there, and after it no LM expects its own end-of-turn marker. An answer
    that is nothing but markers is kept as it is."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    out = answer
    while marker := next((t for t in specials if out.rstrip().endswith(t)), None):
        out = out.rstrip()[: -len(marker)]
    return out.rstrip() if out != answer and out.strip() else answer


ORDER_MIN_WORDS = 8


def reordered(answer: str) -> str | None:
    """``answer``'s words in a random order (whitespace collapsed to single spaces) drawn from
    a generator seeded by the answer's own text, so the same answer always gets the same
    order; None for answers of fewer than :data:`ORDER_MIN_WORDS` words, whose order says
    too little to test."""
    words = answer.split()
    if len(words) < ORDER_MIN_WORDS or len(set(words)) < 2:
        return None
    seed = int.from_bytes(hashlib.sha256(answer.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    while True:
        out = [words[i] for i in rng.permutation(len(words))]
        if out != words:
            return " ".join(out)


def reordered_nll(
    backend: LMBackend,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    answers: Sequence[str],
    *,
    max_length: int = 512,
) -> np.ndarray:
    """NLL(y') per token, after the bare assistant header, of each answer's words in a random
    order (:func:`reordered`) followed by the end-of-turn marker, over as many tokens as
    :func:`pmi_nll` scores of the answer itself (so both include the marker when the whole
    answer fits the window); NaN where the answer has no reordering or cannot be scored. One
    pass."""
    from kmq.models import ChatFormat
    from kmq.quality.lm import token_ids

    rows, given, _ = pmi_windows(tokenizer, prompts, answers, max_length)
    out = np.full(len(answers), np.nan)
    chat = ChatFormat(tokenizer)
    header = token_ids(tokenizer, [chat.context(None)])[0]
    todo: list[tuple[int, str, int]] = []
    for i, (_, scored) in zip(rows, given, strict=True):
        text = reordered(answers[i])
        if text is not None:
            todo.append((i, text, len(scored)))
    if todo:
        bodies = token_ids(tokenizer, [chat.response(text) for _, text, _ in todo])
        windows = [
            (
                header[len(header) - min(len(header), max_length - min(keep, len(body))) :],
                body[:keep],
            )
            for (_, _, keep), body in zip(todo, bodies, strict=True)
        ]
        out[[i for i, _, _ in todo]] = backend.windows_nll(windows, desc="order")
    return out


def pmi_nll(
    backend: LMBackend,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    answers: Sequence[str],
    *,
    max_length: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NLL(y | x), NLL(y), scored tokens) per row: mean nats per token over the same answer
    tokens (one ``backend.windows_nll`` call), NaN (and 0 tokens) for rows that cannot be
    scored."""
    rows, given, alone = pmi_windows(tokenizer, prompts, answers, max_length)
    n = len(answers)
    out = np.full((2, n), np.nan)
    tokens = np.zeros(n)
    if rows:
        both = backend.windows_nll([*given, *alone], desc="pmi")
        out[0, rows], out[1, rows] = both[: len(rows)], both[len(rows) :]
        tokens[rows] = [len(r) for _, r in given]
    return out[0], out[1], tokens


def end_nll(
    backend: LMBackend,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message] | None],
    answers: Sequence[str],
    *,
    max_length: int = 512,
    unconditional: bool = True,
    strip_markers: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(−log P(end of turn | x, y), −log P(end of turn | y)) per row in nats (mean over the
    marker's tokens; see :func:`end_windows`); NaN for rows that cannot be scored, and for
    the second when ``unconditional`` is False (then one pass, not two)."""
    rows, given, alone = end_windows(
        tokenizer, prompts, answers, max_length, strip_markers=strip_markers
    )
    n = len(answers)
    out = np.full((2, n), np.nan)
    if rows:
        values = backend.windows_nll([*given, *alone] if unconditional else given, desc="end")
        out[0, rows] = values[: len(rows)]
        if unconditional:
            out[1, rows] = values[len(rows) :]
    return out[0], out[1]


class _PMIFeedback:
    """The reference LM (behind :func:`kmq.backends.get_lm_backend`, so ``lm_backend``,
    ``dtype``, ``compute_type`` and ``device`` apply) and the batched PMI of (prompt, answer)
    rows under it."""

    def __init__(
        self,
        *,
        model: str = "smollm2",
        max_length: int = 96,
        batch_size: int = 8,
        cache_dir: str | None = None,
        lm_backend: str = "torch",
        device: str | None = None,
        dtype: Any = "float32",
        compute_type: str | None = None,
    ) -> None:
        from kmq.backends import backend_of
        from kmq.quality.lm import check_settings

        check_settings(max_length, batch_size)
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.backend_ = backend_of(
            self, lm_backend, device=device, dtype=dtype, compute_type=compute_type
        )

    @property
    def tokenizer(self) -> Any:
        """The backend's tokenizer (every backend tokenises with the model's own)."""
        return self.backend_.tokenizer

    def pmi(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> np.ndarray:
        """PMI(x; y) in nats, summed over each answer's scored tokens (see the module doc);
        NaN for an empty answer or an unrenderable prompt."""
        given, alone, tokens = pmi_nll(
            self.backend_, self.tokenizer, prompts, answers, max_length=self.max_length
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

    def score(self, prompts: Prompts, gold: Texts, generated: Texts) -> np.ndarray:
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

    def score(self, prompts: Prompts, gold: Texts, generated: Texts) -> np.ndarray:
        return gap(self.pmi, prompts, gold, generated)


def fit_probability(pmi: np.ndarray, end_nll: np.ndarray) -> np.ndarray:
    """``gold-fit``'s S from the summed PMI(x; y) and −log P(end of turn | x, y), both in nats:
    σ(PMI) · P(end | x, y), in [0, 1] (NaN where either is NaN)."""
    return _sigmoid(pmi) * np.exp(-np.asarray(end_nll, dtype=np.float64))


END_PRIOR = 1.0
END_FLOOR = 12.0


def sound_probability(
    pmi: np.ndarray,
    end_given: np.ndarray,
    end_alone: np.ndarray,
    order_gain: np.ndarray,
    *,
    prior: float = END_PRIOR,
    floor: float = END_FLOOR,
) -> np.ndarray:
    """``gold-sound``'s S from the summed PMI(x; y), −log P(end | x, y), −log P(end | y) and the
    order gain NLL(y') − NLL(y) summed over the answer's tokens (y' = its words reordered),
    all in nats: σ(PMI) · σ(log P(end | x, y) − log P(end | y) + ``prior``) ·
    σ(``floor`` + log P(end | x, y)) · σ(order gain), in [0, 1]. A NaN order gain (an answer
    too short to reorder) leaves out the last factor; any other NaN gives NaN."""
    given = np.asarray(end_given, dtype=np.float64)
    alone = np.asarray(end_alone, dtype=np.float64)
    gain = np.asarray(order_gain, dtype=np.float64)
    in_order = np.where(np.isnan(gain), 1.0, _sigmoid(np.nan_to_num(gain)))
    ends = _sigmoid(alone - given + prior) * _sigmoid(floor - given)
    return _sigmoid(pmi) * ends * in_order


def _sigmoid(z: Any) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


class GoldSoundFeedback(_PMIFeedback):
    """S = P(the gold answer is sound): on topic, ending where its prompt says, ending at all,
    in order.

    Four probabilities under the reference LM, each a contrast with a counterfactual, so
    that the LM's taste for one style of answer (the end of GSM8K's ``#### 42``, a bare label)
    moves S much less than with ``gold-fit``:

    - *on topic*: σ(PMI(x; y)), as in ``gold-fit``: the posterior that y was written for x
      rather than drawn independently of it (≤ 0.5 for another prompt's answer).
    - *ends where the prompt says*: σ(log P(end | x, y) − log P(end | y) + 1): the posterior,
      at prior odds e:1, that the prompt, not the answer alone, calls for the turn to end
      here. A first sentence of a longer answer ends where the bare sentence might, but not
      where its prompt asks for more, so the log-ratio turns negative; a style the LM dislikes
      at any end (``#### 42``) cancels in the ratio.
    - *ends at all*: σ(12 + log P(end | x, y)) = P / (P + e⁻¹²): the end is more plausible than
      a floor probability of e⁻¹² ≈ 6·10⁻⁶. A function cut after its signature, or words in no
      order, end where no answer ends, with or without the prompt (so the ratio above cannot
      see it); a complete answer of any style clears the floor.
    - *in order*: σ(NLL(y') − NLL(y)) summed over the answer's tokens, y' = the same words in a
      random order (:func:`reordered`, seeded by the answer's text): the posterior, at even
      odds, that the answer's word order is its own rather than a random one. ≈ 1 for written
      text, ≈ 0.5 for words in no order (a reordering is then no less likely); answers under
      eight words skip this factor.

    The end-of-turn marker follows the answer with any special-token string that ends it
    removed (:func:`strip_end_markers`; T0's answers in ``mix-small`` end in a literal
    ``<|endoftext|>``). Range [0, 1]; higher = a sound gold answer, so its cluster deserves
    more weight. Needs no generated answer; five passes of the reference LM per trained row,
    each at most ``max_length`` tokens. ``benchmarks/results/corruption.md`` measures it
    against ``gold-fit`` on planted noise and on the clean pool.
    """

    name = "gold-sound"
    direction = "higher = gold answer on topic, complete and in order (probability); [0, 1]"
    needs_generation = False

    def score(self, prompts: Prompts, gold: Texts, generated: Texts) -> np.ndarray:
        backend, tokenizer, length = self.backend_, self.tokenizer, self.max_length
        given, alone, tokens = pmi_nll(backend, tokenizer, prompts, gold, max_length=length)
        shuffled = reordered_nll(backend, tokenizer, prompts, gold, max_length=length)
        end_given, end_alone = end_nll(
            backend, tokenizer, prompts, gold, max_length=length, strip_markers=True
        )
        pmi, gain = (alone - given) * tokens, (shuffled - alone) * tokens
        return sound_probability(pmi, end_given, end_alone, gain)


class GoldFitFeedback(_PMIFeedback):
    """S = σ(PMI(x; y_gold)) · P(end of turn | x, y_gold): the gold answer fits its prompt.

    Two probabilities under the reference LM, multiplied as if independent:

    - *on topic*: σ(PMI) with PMI = log p(y | x) − log p(y) summed over the answer's tokens
      (``gold-pmi``) is the posterior probability that y was written for x rather than drawn
      independently of it, at even prior odds (PMI is the log-likelihood ratio of the two; the
      density-ratio reading of contrastive estimation, Gutmann & Hyvärinen 2010, and of
      InfoNCE, van den Oord et al. 2018). ≈ 1 for a real answer, ≤ 0.5 for another prompt's.
    - *complete*: P(end | x, y) is the probability the LM gives the template's end-of-turn
      marker right after the whole answer, given the prompt (:func:`end_windows`): low when
      the answer stops mid-way (cut after its first sentence) or ends on a word no answer
      ends on (its words shuffled).

    Range [0, 1]; higher = a sound gold answer, so its cluster deserves more weight. Needs no
    generated answer (the loop skips generation); three passes of the reference LM per trained
    row, each at most ``max_length`` tokens. ``benchmarks/results/corruption.md``: it starves
    clusters of shuffled, swapped and truncated gold answers, but P(end) is partly a matter of
    style (SmolLM2 does not expect a turn to end after GSM8K's ``#### 42``), so on a clean pool
    three rounds move most of the weight to the sources whose answers end as it expects (code).
    """

    name = "gold-fit"
    direction = "higher = gold answer on topic and complete (probability); [0, 1]"
    needs_generation = False

    def score(self, prompts: Prompts, gold: Texts, generated: Texts) -> np.ndarray:
        pmi = self.pmi(prompts, gold)
        end, _ = end_nll(
            self.backend_,
            self.tokenizer,
            prompts,
            gold,
            max_length=self.max_length,
            unconditional=False,
        )
        return fit_probability(pmi, end)
