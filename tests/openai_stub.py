"""A local, scriptable server that speaks the OpenAI chat-completions and embeddings protocols
(for tests).

``OpenAIStub`` serves ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` on 127.0.0.1 in a
background thread. Its ``script(request, seen)`` decides each reply: ``request`` is the decoded
JSON body and ``seen`` how many earlier requests carried the same messages (chat) or the same
input (embeddings), so "fail twice, then answer" is deterministic per row or batch even with
concurrent clients. It records every request with its headers and the largest number of
requests in flight at once.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted reply: ``body`` is sent as JSON unless it is bytes; ``delay`` in seconds.

    ``drop`` closes the connection without any reply.
    """

    body: Any = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def logprob_reply(probs: Mapping[str, float], *, content: str | None = None) -> Reply:
    """A reply whose answer token's ``top_logprobs`` are ``log(p)`` of the given tokens."""
    top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in probs.items()]
    best = max(probs, key=lambda t: probs[t])
    answer = {"token": best, "logprob": math.log(probs[best]), "top_logprobs": top}
    return Reply(
        body={
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content or best},
                    "logprobs": {"content": [answer]},
                    "finish_reason": "length",
                }
            ],
        }
    )


def content_reply(content: str) -> Reply:
    """A reply with only a text answer (``logprobs`` null, as servers that ignore the option)."""
    return Reply(
        body={
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ]
        }
    )


def embedding_reply(
    vectors: Sequence[Sequence[float]], order: Sequence[int] | None = None
) -> Reply:
    """An embeddings reply: ``vectors[i]`` is input ``i``'s; ``order`` lists the indices in the
    order the items are sent (default: input order)."""
    items = [
        {"object": "embedding", "index": i, "embedding": list(map(float, vectors[i]))}
        for i in (order if order is not None else range(len(vectors)))
    ]
    return Reply(body={"object": "list", "data": items, "model": "stub-embedder"})


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]
    path: str


Script = Callable[[dict[str, Any], int], Reply]


class OpenAIStub:
    """The server; use as a context manager. ``url`` is the ``base_url`` (ends in ``/v1``)."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda request, seen: content_reply("4"))
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _begin(self, body: dict[str, Any], headers: dict[str, str], path: str) -> Reply:
        key = json.dumps(
            body["messages"] if "messages" in body else body.get("input"), sort_keys=True
        )
        with self._lock:
            self.requests.append(Recorded(body, headers, path))
            seen = self._seen[key]
            self._seen[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return self.script(body, seen)

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = stub._begin(json.loads(raw), dict(self.headers.items()), self.path)
                try:
                    time.sleep(reply.delay)
                    if reply.drop:
                        self.close_connection = True
                        return
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    stub._end()

            def _send(self, reply: Reply) -> None:
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                data = body if isinstance(body, bytes) else body.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
