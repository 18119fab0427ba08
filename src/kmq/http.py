"""JSON POST requests to OpenAI-compatible endpoints, shared by the HTTP judge and encoder.

Standard library only. :func:`post_json` turns every failure into a :class:`RequestError`
that says whether a retry may help; :func:`backoff_delay` gives the wait before the next try
and :func:`redact` keeps an API key out of messages.
"""

from __future__ import annotations

import email.utils
import http.client
import random
import time
import urllib.error
import urllib.request
from collections.abc import Collection

ERROR_SNIPPET = 200  # bytes of a reply's body quoted in error messages


class RequestError(Exception):
    """One request failed; ``retryable`` for timeouts, connection errors, 429 and 5xx."""

    def __init__(
        self, kind: str, message: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now; None if absent."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def post_json(
    url: str,
    payload: bytes,
    *,
    api_key: str | None,
    timeout: float,
    endpoint_statuses: Collection[int] = frozenset(),
) -> bytes:
    """The body of the reply to ``payload`` (JSON bytes) POSTed to ``url``.

    ``api_key`` is sent as ``Authorization: Bearer`` when set. Raises :class:`RequestError`:
    kind ``"http"`` for an HTTP error status (``"endpoint"`` for one in ``endpoint_statuses``;
    retryable on 429 and 5xx, with the ``Retry-After`` header's seconds), ``"timeout"`` and
    ``"connection"`` (both retryable).
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body: bytes = reply.read()
            return body
    except urllib.error.HTTPError as exc:
        raise RequestError(
            "endpoint" if exc.code in endpoint_statuses else "http",
            f"HTTP {exc.code} {exc.reason}: {exc.read()[:ERROR_SNIPPET]!r}",
            retryable=exc.code == 429 or exc.code >= 500,
            retry_after=retry_after_seconds(exc.headers.get("Retry-After")),
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _timed_out(timeout) from None
        raise RequestError(
            "connection", f"connection error: {exc.reason}", retryable=True
        ) from None
    except TimeoutError:
        raise _timed_out(timeout) from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise RequestError("connection", f"connection error: {exc!r}", retryable=True) from None


def _timed_out(timeout: float) -> RequestError:
    return RequestError("timeout", f"timed out after {timeout:g} s", retryable=True)


def backoff_delay(backoff: float, attempts: int, retry_after: float | None) -> float:
    """Seconds before try ``attempts + 1``: ``retry_after`` if given, else jittered exponential
    backoff, uniform in [step/2, step] with step = ``backoff`` · 2^(attempts-1)."""
    if retry_after is not None:
        return retry_after
    step = backoff * 2 ** (attempts - 1)
    return step / 2 + random.uniform(0.0, step / 2)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text
