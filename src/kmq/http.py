"""JSON POST requests to OpenAI-compatible endpoints, shared by the HTTP judge and encoder.

Standard library only. :func:`post_json` turns every failure into a :class:`RequestError`
that says whether a retry may help; its ``timeout`` bounds the whole request (connecting,
sending, and reading every byte of the reply: a server that trickles its reply is cut off), and
a ``cancel`` event aborts it at once (Ctrl-C). :func:`backoff_delay` gives the wait before the
next try, a server's ``Retry-After`` capped at :data:`MAX_RETRY_AFTER`; :func:`redact` keeps an
API key out of messages.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import random
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from typing import Any

ERROR_SNIPPET = 200  # bytes of a reply's body quoted in error messages
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is cut to this
WATCH_INTERVAL = 0.05  # seconds between the watchdog's looks at the deadline and the cancel event


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
    cancel: threading.Event | None = None,
) -> bytes:
    """The body of the reply to ``payload`` (JSON bytes) POSTed to ``url``.

    ``api_key`` is sent as ``Authorization: Bearer`` when set. ``timeout`` is the deadline in
    seconds for the whole request; when ``cancel`` is set the request is aborted at once.
    Raises :class:`RequestError`: kind ``"http"`` for an HTTP error status (``"endpoint"`` for
    one in ``endpoint_statuses``; retryable on 429 and 5xx, with the ``Retry-After`` header's
    seconds), ``"timeout"`` and ``"connection"`` (both retryable), ``"cancelled"`` (not).
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    sockets: list[socket.socket] = []
    watch = _Watchdog(sockets, timeout, cancel)
    opener = urllib.request.build_opener(_Http(sockets.append), _Https(sockets.append))
    try:
        with watch, opener.open(request, timeout=timeout) as reply:
            body: bytes = reply.read()
        if watch.fired is not None:  # a reply without a length ends where it was cut
            raise watch.error()
        return body
    except urllib.error.HTTPError as exc:
        raise RequestError(
            "endpoint" if exc.code in endpoint_statuses else "http",
            f"HTTP {exc.code} {exc.reason}: {_snippet(exc)!r}",
            retryable=exc.code == 429 or exc.code >= 500,
            retry_after=retry_after_seconds(exc.headers.get("Retry-After")),
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if watch.fired is not None:
            raise watch.error() from None
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            raise _timed_out(timeout) from None
        raise RequestError("connection", f"connection error: {reason!r}", retryable=True) from None


def _snippet(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()[:ERROR_SNIPPET]
    except (OSError, http.client.HTTPException):
        return b""


class _Watchdog:
    """Shuts the request's sockets down when its deadline passes or ``cancel`` is set, which
    wakes a read blocked on them; ``fired`` says which ("timeout", "cancelled")."""

    def __init__(
        self, sockets: list[socket.socket], timeout: float, cancel: threading.Event | None
    ) -> None:
        self.sockets = sockets
        self.timeout = timeout
        self.cancel = cancel
        self.fired: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Watchdog:
        if self.cancel is not None and self.cancel.is_set():
            self.fired = "cancelled"
            raise self.error()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        end = time.monotonic() + self.timeout
        while not self._done.wait(WATCH_INTERVAL):
            if self.cancel is not None and self.cancel.is_set():
                self.fired = "cancelled"
            elif time.monotonic() >= end:
                self.fired = "timeout"
            else:
                continue
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return

    def error(self) -> RequestError:
        if self.fired == "cancelled":
            return RequestError("cancelled", "the request was cancelled", retryable=False)
        return _timed_out(self.timeout)


def _tracking(
    base: type[http.client.HTTPConnection], track: Callable[[socket.socket], None]
) -> Any:
    """A connection class like ``base`` that hands each socket it opens to ``track``."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            track(self.sock)

    return Tracked


class _Http(urllib.request.HTTPHandler):
    def __init__(self, track: Callable[[socket.socket], None]) -> None:
        super().__init__()
        self._connection = _tracking(http.client.HTTPConnection, track)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, track: Callable[[socket.socket], None]) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(context=self._tls)
        self._connection = _tracking(http.client.HTTPSConnection, track)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._tls)


def _timed_out(timeout: float) -> RequestError:
    return RequestError("timeout", f"timed out after {timeout:g} s", retryable=True)


def backoff_delay(backoff: float, attempts: int, retry_after: float | None) -> float:
    """Seconds before try ``attempts + 1``: ``retry_after`` if given (at most
    :data:`MAX_RETRY_AFTER`), else jittered exponential backoff, uniform in [step/2, step] with
    step = ``backoff`` · 2^(attempts-1)."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    step = backoff * 2 ** (attempts - 1)
    return step / 2 + random.uniform(0.0, step / 2)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text
