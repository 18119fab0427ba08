"""LLM-as-judge quality scorer (Deita-style): ``judge_score`` = the expected 1–6 rating.

A chat model reads :data:`JUDGE_TEMPLATE_V1` filled with the conversation's prompt and its
response and is asked for one digit. The score is the probability-weighted mean rating
Σ r·p(r), where p is the next-token distribution at the answer position restricted to the
rating tokens "1".."6" (with and without a leading space, summed per rating) and
renormalised. Range [1, 6]; higher = better response.

Two backends give the distribution: ``local`` (a transformers chat model, one forward pass per
row, batched) and ``http`` (any OpenAI-compatible chat-completions endpoint, from its
``top_logprobs``; standard library only).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from kmq._imports import require
from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.http import ERROR_SNIPPET as ERROR_SNIPPET  # re-exported
from kmq.http import RequestError, backoff_delay, post_json, redact
from kmq.http import retry_after_seconds as retry_after_seconds  # re-exported

logger = logging.getLogger("kmq")

JUDGE_TEMPLATE_VERSION = "v1"
JUDGE_TEMPLATE_V1 = (
    "Rate how good the assistant's response is as a reply to the conversation below.\n"
    "Judge helpfulness, correctness and depth together, on a scale from 1 to 6:\n"
    "1 = useless or wrong, 2 = poor, 3 = partly helpful, 4 = good, 5 = very good, "
    "6 = excellent (helpful, correct and thorough).\n\n"
    "### Conversation\n{conversation}\n\n"
    "### Response to rate\n{response}\n\n"
    "Answer with a single digit from 1 to 6 and nothing else."
)
"""The judge prompt (version :data:`JUDGE_TEMPLATE_VERSION`), sent as one user message.

``{conversation}`` is every prompt turn as ``Role: text`` separated by blank lines;
``{response}`` is the response being rated. Changing the text needs a new version: the
version is part of the scorer's fingerprint (the score cache key).
"""

RATINGS = np.arange(1, 7, dtype=np.float64)
BACKENDS = ("local", "http")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
CUT_MARKER = "\n[...]\n"
MIN_CHARS = 100
TOP_LOGPROBS = 20
ENDPOINT_STATUSES = (401, 403, 404)  # the endpoint, not the row, is at fault: no retry
ENDPOINT_FAULTS = ("connection", "endpoint")  # failure kinds that say the endpoint is unusable
DOWN_AFTER_FAILURES = 8  # failed rows of any kind, none judged (at least max_concurrency)


# ---------------------------------------------------------------------------------------------
# Rendering and the rating arithmetic (pure functions)


def clip_middle(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its head and tail around a marker.

    The result has at most ``limit`` characters (marker included).
    """
    if len(text) <= limit:
        return text
    keep = max(limit - len(CUT_MARKER), 0)
    head = keep - keep // 2
    return text[:head] + CUT_MARKER + text[len(text) - keep // 2 :]


def split_budget(prompt_chars: int, response_chars: int, max_chars: int) -> tuple[int, int]:
    """Characters allowed to (prompt, response): each gets half, and lends what it does not use."""
    if prompt_chars + response_chars <= max_chars:
        return prompt_chars, response_chars
    half = max_chars // 2
    if prompt_chars <= half:
        return prompt_chars, max_chars - prompt_chars
    if response_chars <= max_chars - half:
        return max_chars - response_chars, response_chars
    return half, max_chars - half


def render_judge_prompt(
    prompt: Sequence[Message], response: str, *, max_chars: int
) -> tuple[str, bool]:
    """The judge prompt for one (prompt turns, response) pair, and whether it was truncated.

    The prompt's rendered turns and the response together keep at most ``max_chars``
    characters; the template's own text does not count.
    """
    conversation = "\n\n".join(f"{ROLE_NAMES[m.role]}: {m.content}" for m in prompt)
    conv_limit, resp_limit = split_budget(len(conversation), len(response), max_chars)
    text = JUDGE_TEMPLATE_V1.format(
        conversation=clip_middle(conversation, conv_limit),
        response=clip_middle(response, resp_limit),
    )
    truncated = conv_limit < len(conversation) or resp_limit < len(response)
    return text, truncated


def rating_of_token(token: str) -> int | None:
    """The rating 1–6 a token stands for ("5", " 5", "5\\n" → 5), else None."""
    stripped = token.strip()
    if len(stripped) == 1 and stripped in "123456":
        return int(stripped)
    return None


def mass_from_logprobs(logprobs: Iterable[tuple[str, float]]) -> np.ndarray:
    """Probability of each rating 1..6 (shape (6,)), summed over the tokens that spell it."""
    mass = np.zeros(6, dtype=np.float64)
    for token, logprob in logprobs:
        rating = rating_of_token(token)
        if rating is not None:
            mass[rating - 1] += math.exp(logprob)
    return mass


def expected_rating(mass: np.ndarray, *, min_mass: float) -> float:
    """Σ r·p(r) with p = ``mass`` (probabilities of ratings 1..6) renormalised; range [1, 6].

    Raises :class:`RowFailure` if the ratings carry less than ``min_mass`` in total.
    """
    total = float(mass.sum())
    if not total >= min_mass:
        raise RowFailure(
            "low-mass", f"the rating tokens 1-6 carry probability {total:.3g} < {min_mass=:g}"
        )
    return float(RATINGS @ mass / total)


def digit_in(content: str) -> int:
    """The first stand-alone digit 1–6 in a reply's text; :class:`RowFailure` if there is none."""
    found = re.search(r"(?<!\d)[1-6](?!\d)", content)
    if found is None:
        raise RowFailure("no-digit", f"no rating digit 1-6 in the reply {content[:40]!r}")
    return int(found.group())


class RowFailure(Exception):
    """One row could not be judged: ``kind`` classifies it, the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a backend got for one row: rating probabilities, a parsed digit, or an error.

    ``mass``: probability of each rating 1..6 (not renormalised). ``digit``: the rating read
    from the reply's text when the server gave no logprobs. ``kind``/``error``: why the row
    failed. ``attempts``: requests made (1 for the local backend).
    """

    mass: np.ndarray | None = None
    digit: int | None = None
    kind: str | None = None
    error: str | None = None
    attempts: int = 1


class JudgeBackend(Protocol):
    """Runs the judge model on rendered judge prompts."""

    def fingerprint(self) -> str: ...

    def judge(self, texts: Sequence[str]) -> list[Verdict]: ...


# ---------------------------------------------------------------------------------------------
# The scorer


class JudgeScorer:
    """``judge_score``: an LLM judge's expected 1–6 rating of the response. Range [1, 6].

    Higher = better response (helpfulness, correctness, depth). Rows the backend could not
    judge are NaN; after each :meth:`rate`/:meth:`score` call, ``failures_`` lists them as
    ``{"index", "kind", "error", "attempts"}`` (plus ``"id"`` from :meth:`score`),
    ``truncated_`` the indices whose text was cut to ``max_chars`` and ``fallback_`` the
    indices scored from the reply's digit because the server returned no logprobs (an integer
    score). Indices count from 0 in that call's input.
    """

    name = "judge"
    direction = (
        "higher = better response as rated by an LLM judge (probability-weighted mean of a "
        "1-6 rating for helpfulness, correctness and depth); range [1, 6]"
    )

    def __init__(
        self, backend: JudgeBackend, *, max_chars: int = 6000, min_mass: float = 1e-4
    ) -> None:
        self.backend = backend
        self.max_chars = max_chars
        self.min_mass = min_mass
        self.failures_: list[dict[str, Any]] = []
        self.truncated_: list[int] = []
        self.fallback_: list[int] = []

    def fingerprint(self) -> str:
        return (
            f"judge/{self.backend.fingerprint()}/template={JUDGE_TEMPLATE_VERSION}"
            f"/max_chars={self.max_chars}/min_mass={self.min_mass:g}"
        )

    def rate(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> np.ndarray:
        """The judge's expected rating of each ``responses[i]`` to ``prompts[i]``.

        float64, range [1, 6], higher = better; NaN where the row failed (see ``failures_``).
        """
        if len(prompts) != len(responses):
            raise KmqError(
                f"rate needs one response per prompt; got {len(prompts)} prompts "
                f"and {len(responses)} responses"
            )
        rendered = [
            render_judge_prompt(p, r, max_chars=self.max_chars)
            for p, r in zip(prompts, responses, strict=True)
        ]
        self.truncated_ = [i for i, (_, cut) in enumerate(rendered) if cut]
        verdicts = self.backend.judge([text for text, _ in rendered]) if rendered else []
        scores = np.full(len(verdicts), np.nan, dtype=np.float64)
        self.failures_, self.fallback_ = [], []
        for i, verdict in enumerate(verdicts):
            try:
                scores[i] = self._score_verdict(verdict)
            except RowFailure as exc:
                self.failures_.append(
                    {"index": i, "kind": exc.kind, "error": str(exc), "attempts": verdict.attempts}
                )
            else:
                if verdict.mass is None:
                    self.fallback_.append(i)
        self._log_summary(len(verdicts))
        return scores

    def score(self, examples: Sequence[Example]) -> np.ndarray:
        """``judge_score`` of each example's last response to its prompt; see :meth:`rate`."""
        scores = self.rate([ex.prompt for ex in examples], [ex.response for ex in examples])
        for failure in self.failures_:
            failure["id"] = examples[failure["index"]].id
        return scores

    def failure_summary(self) -> str:
        """One line on the last call's failed rows: counts per kind and the first error."""
        if not self.failures_:
            return "no failures"
        kinds = Counter(f["kind"] for f in self.failures_)
        first = self.failures_[0]
        counts = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        return (
            f"{len(self.failures_)} rows failed ({counts}); first: row {first['index']}: "
            f"{first['error']} ({first['attempts']} attempts)"
        )

    def _score_verdict(self, verdict: Verdict) -> float:
        if verdict.error is not None:
            raise RowFailure(verdict.kind or "error", verdict.error)
        if verdict.mass is not None:
            return expected_rating(verdict.mass, min_mass=self.min_mass)
        if verdict.digit is None:
            raise RowFailure("malformed", "the backend returned neither logprobs nor a digit")
        return float(verdict.digit)

    def _log_summary(self, n: int) -> None:
        if self.failures_:
            logger.warning(
                "judge: %s of %d rows are NaN: %s", len(self.failures_), n, self.failure_summary()
            )
        if self.fallback_:
            logger.warning(
                "judge: the server returned no logprobs for %d of %d rows; they were scored "
                "from the digit in the reply (integer scores)",
                len(self.fallback_),
                n,
            )
        if self.truncated_:
            logger.info(
                "judge: %d of %d rows were cut to max_chars=%d",
                len(self.truncated_),
                n,
                self.max_chars,
            )


# ---------------------------------------------------------------------------------------------
# Local backend: a transformers chat model


def rating_token_ids(tokenizer: Any) -> list[list[int]]:
    """Per rating 1..6, the token ids that spell it as the answer ("5" and " 5" variants).

    A variant that encodes to several tokens (a bare space, then the digit) contributes its
    last token when that token decodes to the digit.
    """
    ids: list[list[int]] = []
    for rating in range(1, 7):
        found: list[int] = []
        for variant in (str(rating), f" {rating}"):
            encoded = tokenizer.encode(variant, add_special_tokens=False)
            last = encoded[-1] if encoded else None
            if (
                last is not None
                and last not in found
                and rating_of_token(tokenizer.decode([last])) == rating
            ):
                found.append(last)
        if not found:
            raise KmqError(
                f"the judge model's tokenizer has no single token for the digit {rating}"
            )
        ids.append(found)
    return ids


class LocalJudgeBackend:
    """A transformers chat model (``smollm2`` or a local folder) loaded by
    :func:`kmq.models.load_causal_lm`.

    Each judge prompt becomes one user turn in the model's chat template with the assistant
    header appended (:class:`kmq.models.ChatFormat`) and goes through one forward pass; rows
    are sorted by length and batched with left padding.
    """

    def __init__(
        self,
        model: str = "smollm2",
        *,
        batch_size: int = 4,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        dtype: Any = "float32",
        show_progress: bool = True,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.device = device
        self.dtype = dtype
        self.show_progress = show_progress
        self._loaded: tuple[Any, Any, list[list[int]]] | None = None
        self._identity: str | None = None

    def fingerprint(self) -> str:
        if self._identity is None:
            from kmq.models import model_identity

            self._identity = model_identity(self.model)
        dtype = str(self.dtype).removeprefix("torch.")
        return f"local/{self._identity}/dtype={dtype}"

    @property
    def loaded(self) -> tuple[Any, Any, list[list[int]]]:
        """(model, tokenizer set to pad on the left, rating token ids), loaded on first use."""
        if self._loaded is None:
            from kmq.models import load_causal_lm

            model, tokenizer = load_causal_lm(
                self.model, cache_dir=self.cache_dir, dtype=self.dtype, device=self.device
            )
            tokenizer.padding_side = "left"
            self._loaded = (model, tokenizer, rating_token_ids(tokenizer))
        return self._loaded

    def chat_texts(self, texts: Sequence[str]) -> list[str]:
        """Each judge prompt as one user turn in the model's chat template, ready to answer."""
        from kmq.models import ChatFormat

        chat = ChatFormat(self.loaded[1])
        return [chat.context([Message("user", text)]) for text in texts]

    def rating_mass(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of each rating 1..6 as the model's answer, shape (len(texts), 6)."""
        torch = require("torch")
        tokenizer = self.loaded[1]
        chats = self.chat_texts(texts)
        lengths = [len(ids) for ids in tokenizer(chats, add_special_tokens=False)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(chats), 6), dtype=np.float64)
        with (
            torch.inference_mode(),
            tqdm(
                total=len(chats), desc="judging (local)", unit="row", disable=not self.show_progress
            ) as bar,
        ):
            for start in range(0, len(chats), self.batch_size):
                rows = order[start : start + self.batch_size]
                out[rows] = self._batch_mass([chats[i] for i in rows])
                bar.update(len(rows))
        return out

    def _batch_mass(self, chats: list[str]) -> np.ndarray:
        torch = require("torch")
        model, tokenizer, rating_ids = self.loaded
        batch = tokenizer(chats, add_special_tokens=False, padding=True, return_tensors="pt")
        mask = batch["attention_mask"]
        device = next(model.parameters()).device
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
        ).logits[:, -1, :]
        probs = torch.softmax(logits.float(), dim=-1)
        mass = torch.stack([probs[:, ids].sum(dim=-1) for ids in rating_ids], dim=-1)
        return np.asarray(mass.cpu().numpy(), dtype=np.float64)

    def judge(self, texts: Sequence[str]) -> list[Verdict]:
        return [Verdict(mass=row) for row in self.rating_mass(texts)]


# ---------------------------------------------------------------------------------------------
# HTTP backend: an OpenAI-compatible chat-completions endpoint


def parse_reply(body: bytes) -> Verdict:
    """A chat-completions reply as rating probabilities (from ``top_logprobs``) or a digit.

    Raises :class:`RowFailure` on a reply that is not JSON or lacks the fields.
    """
    try:
        data = json.loads(body)
    except ValueError:
        raise RowFailure("malformed", f"the reply is not JSON: {body[:80]!r}") from None
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise RowFailure("malformed", f"the reply has no choices[0]: {body[:80]!r}") from None
    try:
        logprobs = (choice.get("logprobs") or {}).get("content")
        if logprobs:
            return Verdict(mass=mass_from_logprobs(_answer_logprobs(logprobs[0])))
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise RowFailure("malformed", f"the reply's choices[0] is malformed ({exc!r})") from None
    if not isinstance(content, str):
        raise RowFailure("malformed", "the reply has neither logprobs nor a text content")
    return Verdict(digit=digit_in(content))


def _answer_logprobs(entry: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) of the answer token and its ``top_logprobs`` (list or mapping form)."""
    top = entry.get("top_logprobs") or []
    pairs = (
        [(str(t), float(lp)) for t, lp in top.items()]
        if isinstance(top, Mapping)
        else [(str(item["token"]), float(item["logprob"])) for item in top]
    )
    if "token" in entry and "logprob" in entry:
        pairs.append((str(entry["token"]), float(entry["logprob"])))
    return list(dict(pairs).items())


class HttpJudgeBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, OpenAI...).

    Asks for one token at temperature 0 with ``top_logprobs``; without logprobs the digit in the
    reply is used. At most ``max_concurrency`` requests are in flight. Timeouts, connection
    errors, 429 and 5xx are retried up to ``max_retries`` times with exponential backoff
    (``backoff`` · 2^k seconds, jittered) or the server's ``Retry-After``; other 4xx and
    malformed replies fail the row at once. ``timeout`` bounds each request as a whole (a
    server that trickles its reply is cut off), a ``Retry-After`` is capped at
    :data:`kmq.http.MAX_RETRY_AFTER` seconds, and Ctrl-C aborts the requests in flight. When
    ``min(rows, max_concurrency)`` consecutive rows fail with connection errors (after their
    retries) or HTTP 401/403/404, or the first ``max(max_concurrency, DOWN_AFTER_FAILURES)``
    rows all fail in any way (5xx, timeouts, garbage), the endpoint is taken to be down or
    misconfigured: the remaining requests are dropped and a :class:`KmqError` naming the URL
    is raised (a dead server costs seconds, not a NaN per row).

    The API key is read from the environment variable ``api_key_env`` (sent as
    ``Authorization: Bearer``, omitted when unset); it never appears in the fingerprint,
    failures or logs.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        show_progress: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.show_progress = show_progress

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def fingerprint(self) -> str:
        return f"http/{self.base_url}/{self.model}/top_logprobs={TOP_LOGPROBS}"

    def judge(self, texts: Sequence[str]) -> list[Verdict]:
        api_key = os.environ.get(self.api_key_env) or None
        verdicts: dict[int, Verdict] = {}
        down_after = min(len(texts), self.max_concurrency)
        failing_after = max(self.max_concurrency, DOWN_AFTER_FAILURES)
        faults = failures = judged = 0
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        try:
            with tqdm(
                total=len(texts), desc="judging (http)", unit="row", disable=not self.show_progress
            ) as bar:
                futures: dict[Future[Verdict], int] = {
                    pool.submit(self._judge_one, text, api_key, stop): i
                    for i, text in enumerate(texts)
                }
                for future in as_completed(futures):
                    verdict = verdicts[futures[future]] = future.result()
                    bar.update(1)
                    faults = faults + 1 if verdict.kind in ENDPOINT_FAULTS else 0
                    failures += verdict.error is not None
                    judged += verdict.error is None
                    if faults >= down_after or (failures >= failing_after and not judged):
                        raise KmqError(
                            f"the judge endpoint {self.url} cannot be used: the last "
                            f"{max(faults, failures)} rows all failed ({verdict.error}; "
                            f"{verdict.attempts} attempts). Check that the server is running "
                            f"and healthy, the model name {self.model!r} and the API key in "
                            f"${self.api_key_env}. Nothing failed is cached: a rerun scores "
                            "those rows again."
                        )
        finally:
            stop.set()  # aborts requests in flight and backoff waits (also on Ctrl-C)
            pool.shutdown(wait=True, cancel_futures=True)
        return [verdicts[i] for i in range(len(texts))]

    def _judge_one(self, text: str, api_key: str | None, stop: threading.Event) -> Verdict:
        payload = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
            }
        ).encode()
        attempts = 0
        while True:
            attempts += 1
            try:
                body = post_json(
                    self.url,
                    payload,
                    api_key=api_key,
                    timeout=self.timeout,
                    endpoint_statuses=ENDPOINT_STATUSES,
                    cancel=stop,
                )
                verdict = parse_reply(body)
            except RequestError as exc:
                last_try = not exc.retryable or attempts > self.max_retries
                if last_try or stop.wait(backoff_delay(self.backoff, attempts, exc.retry_after)):
                    message = redact(str(exc), api_key)
                    return Verdict(kind=exc.kind, error=message, attempts=attempts)
            except RowFailure as exc:
                return Verdict(kind=exc.kind, error=redact(str(exc), api_key), attempts=attempts)
            else:
                return replace(verdict, attempts=attempts)


# ---------------------------------------------------------------------------------------------
# Factory


def make_judge(
    *,
    backend: str = "local",
    model: str = "smollm2",
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff: float = 0.5,
    batch_size: int = 4,
    max_chars: int = 6000,
    min_mass: float = 1e-4,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: Any = "float32",
    show_progress: bool = True,
) -> JudgeScorer:
    """The ``judge`` quality scorer: ``judge_score`` in [1, 6], higher = better response.

    ``backend="local"`` runs ``model`` (``smollm2`` or a local HF folder) with transformers
    (``batch_size``, ``cache_dir``, ``device``, ``dtype``). ``backend="http"`` calls
    ``{base_url}/chat/completions`` for the served ``model`` (``api_key_env``,
    ``max_concurrency``, ``timeout`` seconds per request, ``max_retries``, ``backoff``
    seconds). ``max_chars`` caps the prompt + response characters shown to the judge; rows
    whose rating tokens carry less than ``min_mass`` probability fail (NaN).
    """
    _check_common(max_chars=max_chars, min_mass=min_mass)
    if backend == "local":
        if base_url is not None:
            raise KmqError(
                f"base_url is only used by backend='http'; got {base_url=!r} with backend='local'"
            )
        _check_int("batch_size", batch_size, 1)
        local = LocalJudgeBackend(
            model,
            batch_size=batch_size,
            cache_dir=cache_dir,
            device=device,
            dtype=dtype,
            show_progress=show_progress,
        )
        return JudgeScorer(local, max_chars=max_chars, min_mass=min_mass)
    if backend == "http":
        if not base_url:
            raise KmqError(
                "backend='http' needs base_url, the endpoint's root "
                "(for example http://127.0.0.1:8000/v1)"
            )
        if not base_url.startswith(("http://", "https://")):
            raise KmqError(f"base_url must start with http:// or https://; got {base_url!r}")
        if not api_key_env:
            raise KmqError("api_key_env must name an environment variable; got ''")
        _check_int("max_concurrency", max_concurrency, 1)
        _check_int("max_retries", max_retries, 0)
        if not timeout > 0:
            raise KmqError(f"timeout must be > 0 seconds; got {timeout!r}")
        if not backoff >= 0:
            raise KmqError(f"backoff must be >= 0 seconds; got {backoff!r}")
        remote = HttpJudgeBackend(
            base_url,
            model,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            show_progress=show_progress,
        )
        return JudgeScorer(remote, max_chars=max_chars, min_mass=min_mass)
    raise KmqError(f"judge backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def _check_common(*, max_chars: int, min_mass: float) -> None:
    _check_int("max_chars", max_chars, MIN_CHARS)
    if not 0 < min_mass < 1:
        raise KmqError(f"min_mass must be in (0, 1); got {min_mass!r}")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise KmqError(f"{name} must be an integer >= {low}; got {value!r}")
