"""An OpenAI-compatible embeddings endpoint (OpenAI, vLLM, llama.cpp server, TEI...).

Texts go in batches of ``batch_size`` to ``POST {base_url}/embeddings`` as
``{"model": ..., "input": [...]}``, at most ``max_concurrency`` requests at once (standard
library only). Timeouts, connection errors, 429 and 5xx are retried up to ``max_retries`` times
with exponential backoff (``backoff`` · 2^k seconds, jittered) or the server's ``Retry-After``
(capped at :data:`kmq.http.MAX_RETRY_AFTER`); ``timeout`` bounds each request as a whole; other
4xx and malformed replies fail the batch at once. A failed batch stops the run with a
:class:`KmqError` naming it; Ctrl-C aborts the requests in flight and stops at once.

Through the embedding cache (:mod:`kmq.cache`) every batch is a shard of the per-row cache,
saved as soon as it is answered and checked first (one vector per text, finite, the dimension
the cache holds), so a rerun after an interruption or a failure requests only the batches that
were not answered, and a bad reply is never kept. The API key is read from the environment
variable ``api_key_env`` (sent as ``Authorization: Bearer``, omitted when unset); it never
appears in the encoder's name, errors or logs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice

import numpy as np

from kmq import progress
from kmq.errors import KmqError
from kmq.http import ERROR_SNIPPET, RequestError, backoff_delay, post_json, redact


class MalformedReply(Exception):
    """The endpoint answered, but not with one embedding per input."""


class BatchFailure(Exception):
    """A batch failed for good: after its retries, or at once (4xx, malformed reply)."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


def parse_embeddings(body: bytes, n: int) -> np.ndarray:
    """The ``(n, d)`` float32 embeddings of an ``/embeddings`` reply, in input order (by each
    item's ``index``). Raises :class:`MalformedReply` saying what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedReply(f"the reply is not JSON: {body[:ERROR_SNIPPET]!r}") from None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise MalformedReply(f"the reply has no 'data' list: {body[:ERROR_SNIPPET]!r}")
    if len(items) != n:
        raise MalformedReply(f"the reply has {len(items)} embeddings for {n} inputs")
    ordered: list[object] = [None] * n
    for pos, item in enumerate(items):
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise MalformedReply(
                f"data[{pos}] has index {index!r}; expected an integer in [0, {n})"
            )
        if ordered[index] is not None:
            raise MalformedReply(f"index {index} appears twice in the reply")
        vector = item.get("embedding")
        if not isinstance(vector, list) or not vector:
            raise MalformedReply(
                f"data[{pos}].embedding is not a non-empty list of numbers: {str(vector)[:80]}"
            )
        ordered[index] = vector
    lengths = sorted({len(v) for v in ordered if isinstance(v, list)})
    if len(lengths) > 1:
        raise MalformedReply(f"the embeddings have different lengths: {lengths}")
    array = np.asarray(ordered)
    if array.dtype.kind not in "fi":
        raise MalformedReply(f"the embeddings hold non-numbers (read as dtype {array.dtype})")
    if not np.isfinite(array).all():
        raise MalformedReply("the embeddings hold NaN or infinite values")
    return array.astype(np.float32)


class OpenAIEmbeddingEncoder:
    """Embeddings from an OpenAI-compatible endpoint (see the module doc); rows are float32
    and L2-normalised. ``dim_`` is the embedding size the endpoint returned."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 64,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise KmqError(f"base_url must start with http:// or https://; got {base_url!r}")
        if not api_key_env:
            raise KmqError("api_key_env must name an environment variable; got ''")
        for option, value, low in (
            ("batch_size", batch_size, 1),
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
        ):
            if value < low:
                raise KmqError(f"{option} must be an integer >= {low}; got {value!r}")
        if not timeout > 0:
            raise KmqError(f"timeout must be > 0 seconds; got {timeout!r}")
        if not backoff >= 0:
            raise KmqError(f"backoff must be >= 0 seconds; got {backoff!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.name = f"api:{self.base_url}/{model}"
        self.dim_: int | None = None

    @property
    def url(self) -> str:
        return f"{self.base_url}/embeddings"

    @property
    def shard_rows(self) -> int:
        """Rows per shard of the embedding cache: one request each, saved when answered."""
        return self.batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        batches = [texts[s : s + self.batch_size] for s in range(0, len(texts), self.batch_size)]
        answers = dict(self.encode_batches(batches))
        return self._assemble([answers[b] for b in range(len(batches))])

    def encode_batches(self, batches: Iterable[Sequence[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """``(number, L2-normalised vectors)`` of each batch, one request each, as they are
        answered (at most ``max_concurrency`` in flight; batches are taken from ``batches``
        only as requests are sent). Raises :class:`KmqError` on the first batch that fails;
        an interruption (Ctrl-C, the consumer stopping) aborts the requests in flight."""
        api_key = os.environ.get(self.api_key_env) or None
        stop = threading.Event()
        todo = enumerate(batches)
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        futures: dict[Future[np.ndarray], tuple[int, int]] = {}
        try:
            while True:
                for number, texts in islice(todo, self.max_concurrency - len(futures)):
                    future = pool.submit(self._fetch, texts, api_key, stop)
                    futures[future] = (number, len(texts))
                if not futures:
                    return
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                failed: tuple[int, int, BatchFailure] | None = None
                for future in sorted(done, key=lambda f: futures[f][0]):
                    number, size = futures.pop(future)
                    try:
                        vectors = future.result()
                    except BatchFailure as failure:
                        failed = failed or (number, size, failure)
                        continue
                    progress.advance(size)
                    yield number, _unit(vectors)  # answered batches first: they are kept
                if failed is not None:
                    number, size, error = failed
                    raise KmqError(
                        f"the embeddings endpoint {self.url} failed on batch {number + 1} "
                        f"({size} texts) after {error.attempts} attempts: {error}. Batches "
                        "already answered are kept in the embedding cache; a rerun "
                        "requests only the others."
                    )
        finally:
            stop.set()  # aborts requests in flight and backoff waits
            pool.shutdown(wait=True, cancel_futures=True)

    def _assemble(self, batches: list[np.ndarray]) -> np.ndarray:
        for b, batch in enumerate(batches):
            if self.dim_ is None:
                self.dim_ = int(batch.shape[1])
            elif batch.shape[1] != self.dim_:
                raise KmqError(
                    f"the embeddings endpoint {self.url} returned {batch.shape[1]}-dimensional "
                    f"vectors for batch {b + 1} after {self.dim_}-dimensional ones; "
                    f"is {self.model!r} still the model it serves?"
                )
        if not batches:
            return np.zeros((0, self.dim_ or 0), dtype=np.float32)
        return np.concatenate(batches)

    def _fetch(
        self, texts: Sequence[str], api_key: str | None, stop: threading.Event
    ) -> np.ndarray:
        """One batch's embeddings; :class:`BatchFailure` when it fails."""
        payload = json.dumps({"model": self.model, "input": list(texts)}).encode()
        attempts = 0
        while True:
            attempts += 1
            try:
                body = post_json(
                    self.url, payload, api_key=api_key, timeout=self.timeout, cancel=stop
                )
                return parse_embeddings(body, len(texts))
            except RequestError as exc:
                last_try = not exc.retryable or attempts > self.max_retries
                if last_try or stop.wait(backoff_delay(self.backoff, attempts, exc.retry_after)):
                    raise BatchFailure(redact(str(exc), api_key), attempts) from None
            except MalformedReply as exc:
                raise BatchFailure(
                    f"malformed reply: {redact(str(exc), api_key)}", attempts
                ) from None


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero), as float32."""
    wide = vectors.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return (wide / np.where(norms == 0, 1.0, norms)).astype(np.float32)
