"""Remote calls that fail, hang, trickle or are interrupted (judge over HTTP, API embeddings):
nothing failed is cached, waits are capped, a request has one deadline, Ctrl-C stops at once."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kmq import http
from kmq.cache import embed_cached
from kmq.encoders import get_encoder
from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.quality.cache import score_cached
from kmq.quality.judge import make_judge
from kmq.scoring import compute_quality
from tests.openai_stub import OpenAIStub, Reply, embedding_reply, logprob_reply

TEXTS = [f"text number {i}" for i in range(10)]


def vector(text: str, dim: int = 8) -> list[float]:
    rng = np.random.default_rng(sum(text.encode()))
    return rng.normal(size=dim).tolist()


def examples(n: int, **fields: Any) -> list[Example]:
    return [
        Example(
            id=f"r{i}",
            messages=(Message("user", f"question {i}"), Message("assistant", f"answer [row {i}]")),
            row=i,
            fields=fields,
        )
        for i in range(n)
    ]


def row_of(request: dict[str, Any]) -> int:
    return int(request["messages"][0]["content"].split("[row ")[1].split("]")[0])


def judge(stub: OpenAIStub, **options: Any) -> Any:
    settings = {"backoff": 0.001, "timeout": 30.0, "show_progress": False, "max_retries": 1}
    return make_judge(backend="http", base_url=stub.url, model="m", **(settings | options))


def api_encoder(stub: OpenAIStub, **options: Any) -> Any:
    spec = {"base_url": stub.url, "backoff": 0.001, "timeout": 30, "max_retries": 1} | options
    return get_encoder(
        "api:e," + ",".join(f"{k}={v}" for k, v in spec.items()),
        batch_size=3,
        show_progress=False,
    )


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


# --------------------------------------------------------------------------- never cached


def test_failed_judge_rows_are_not_cached_and_are_retried(stub: OpenAIStub, tmp_path: Path) -> None:
    rows = examples(12)
    stub.script = lambda request, seen: (
        Reply({"error": "internal"}, status=500)
        if row_of(request) in (3, 7)
        else logprob_reply({"5": 1.0})
    )
    first, _ = score_cached(rows, judge(stub), cache_dir=tmp_path, show_progress=False)
    assert np.isnan(first).nonzero()[0].tolist() == [3, 7]
    stub.requests.clear()
    stub.script = lambda request, seen: logprob_reply({"4": 1.0})
    again, hit = score_cached(rows, judge(stub), cache_dir=tmp_path, show_progress=False)
    assert sorted(row_of(r.body) for r in stub.requests) == [3, 7]  # only the failed rows
    assert not hit and again[[3, 7]].tolist() == [4.0, 4.0]
    assert np.array_equal(np.delete(again, [3, 7]), np.delete(first, [3, 7]))


def test_score_cache_computes_only_the_rows_asked_for(stub: OpenAIStub, tmp_path: Path) -> None:
    rows = examples(10)
    stub.script = lambda request, seen: logprob_reply({str(1 + row_of(request) % 6): 1.0})
    some, _ = score_cached(rows, judge(stub), rows=[8, 1, 4], cache_dir=tmp_path)
    assert some.tolist() == [3.0, 2.0, 5.0]
    assert sorted(row_of(r.body) for r in stub.requests) == [1, 4, 8]
    stub.requests.clear()
    every, _ = score_cached(rows, judge(stub), cache_dir=tmp_path, show_progress=False)
    assert sorted(row_of(r.body) for r in stub.requests) == [0, 2, 3, 5, 6, 7, 9]
    assert every.tolist() == [float(1 + i % 6) for i in range(10)]


def test_a_scorer_that_scores_nothing_is_an_error_not_a_column_of_nan(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    stub.script = lambda request, seen: Reply(b"\x00garbage")
    with pytest.raises(KmqError, match=r"none of the 3 rows could be scored.*malformed"):
        compute_quality(
            examples(3),
            "judge",
            options={"backend": "http", "base_url": stub.url, "model": "m", "show_progress": False},
            cache_dir=tmp_path,
            show_progress=False,
        )


def test_edited_column_scores_are_never_stale(tmp_path: Path) -> None:
    for value in (1.0, 5.0):
        scores = compute_quality(
            examples(3, q=value),
            "column",
            options={"field": "q"},
            cache_dir=tmp_path,
            show_progress=False,
        )
        assert scores.values.tolist() == [value] * 3


def test_an_endpoint_that_changes_dimension_mid_run_leaves_nothing_behind(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    stub.script = lambda request, seen: embedding_reply(
        [vector(t, dim=4 if "text number 9" in request["input"] else 8) for t in request["input"]]
    )
    with pytest.raises(KmqError, match=r"shape \(8,\), then \(4,\); nothing from this pass"):
        embed_cached(TEXTS, api_encoder(stub, max_concurrency=1), view="user", cache_dir=tmp_path)
    stub.script = lambda request, seen: embedding_reply([vector(t, 4) for t in request["input"]])
    vectors, _ = embed_cached(TEXTS, api_encoder(stub), view="user", cache_dir=tmp_path)
    assert vectors.shape == (10, 4)  # the fixed server's dimension, no stale 8-d rows


# --------------------------------------------------------------------------- endpoint down


def test_an_all_500_judge_is_declared_down_after_a_few_rows(stub: OpenAIStub) -> None:
    stub.script = lambda request, seen: Reply({"error": "internal"}, status=500)
    scorer = judge(stub, max_concurrency=2)
    with pytest.raises(KmqError, match=r"cannot be used: the last 8 rows all failed.*HTTP 500"):
        scorer.score(examples(200))
    assert len(stub.requests) < 2 * 20  # 2 attempts per row, a few rows, not 200


def test_a_judge_failing_on_some_rows_is_not_declared_down(stub: OpenAIStub) -> None:
    stub.script = lambda request, seen: (
        Reply({"error": "internal"}, status=500, delay=0.05)  # failed rows finish last
        if row_of(request) % 4 == 0
        else logprob_reply({"3": 1.0})
    )
    scores = judge(stub, max_concurrency=2).score(examples(40))
    assert np.isnan(scores).nonzero()[0].tolist() == list(range(0, 40, 4))


# --------------------------------------------------------------------------- waits and deadlines


def test_retry_after_is_capped() -> None:
    assert http.backoff_delay(0.5, 1, 1e9) == http.MAX_RETRY_AFTER
    assert http.backoff_delay(0.5, 1, 2.0) == 2.0


def test_a_huge_retry_after_waits_only_the_cap(
    stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "MAX_RETRY_AFTER", 0.05)
    stub.script = lambda request, seen: (
        Reply({"error": "slow down"}, status=429, headers={"Retry-After": "1000000000"})
        if seen == 0
        else logprob_reply({"6": 1.0})
    )
    assert judge(stub).score(examples(1)).tolist() == [6.0]
    assert len(stub.requests) == 2


class Trickle:
    """A raw HTTP server that sends its headers, then the body one byte every ``drip`` s."""

    def __init__(self, drip: float) -> None:
        self.drip = drip
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/v1"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.recv(65536)
            body = b'{"data": []}' * 100
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for byte in body:
                if self.stop.wait(self.drip):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def test_the_timeout_bounds_the_whole_request_against_a_trickling_server() -> None:
    server = Trickle(drip=0.05)
    try:
        start = time.monotonic()
        with pytest.raises(http.RequestError, match=r"timed out after 0\.5 s") as info:
            http.post_json(server.url + "/embeddings", b"{}", api_key=None, timeout=0.5)
        assert info.value.kind == "timeout" and info.value.retryable
        assert time.monotonic() - start < 10  # the body alone would take 60 s
    finally:
        server.close()


def test_a_cancelled_request_stops_at_once() -> None:
    server = Trickle(drip=0.05)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    try:
        with pytest.raises(http.RequestError, match="cancelled") as info:
            http.post_json(server.url, b"{}", api_key=None, timeout=120, cancel=cancel)
        assert not info.value.retryable
    finally:
        server.close()


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in a terminal (a process started in the background
    with ``&`` inherits SIGINT ignored, and then these tests could not interrupt anything)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_api_encoder_promptly_and_saves_nothing_half_done(
    stub: OpenAIStub, tmp_path: Path, ctrl_c: None
) -> None:
    def interrupt_on_the_last_batch(request: dict[str, Any], seen: int) -> Reply:
        reply = embedding_reply([vector(t) for t in request["input"]])
        if "text number 9" not in request["input"]:
            return reply
        main = threading.main_thread().ident
        threading.Timer(0.3, signal.pthread_kill, args=(main, signal.SIGINT)).start()
        return Reply(reply.body, delay=30)

    stub.script = interrupt_on_the_last_batch
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        embed_cached(
            TEXTS,
            api_encoder(stub, timeout=60, max_concurrency=1),  # batches in order
            view="user",
            cache_dir=tmp_path,
        )
    assert time.monotonic() - start < 15  # the last request alone would hold it for 30 s
    stub.requests.clear()
    embed_cached(TEXTS[:9], api_encoder(stub), view="user", cache_dir=tmp_path)
    assert stub.requests == []  # the three answered batches were kept, whole
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []


def test_ctrl_c_stops_the_http_judge_promptly(stub: OpenAIStub, ctrl_c: None) -> None:
    stub.script = lambda request, seen: Reply(logprob_reply({"5": 1.0}).body, delay=30)
    interrupt = threading.Timer(
        0.5, signal.pthread_kill, args=(threading.main_thread().ident, signal.SIGINT)
    )
    start = time.monotonic()
    interrupt.start()
    with pytest.raises(KeyboardInterrupt):
        judge(stub, timeout=60).score(examples(4))
    assert time.monotonic() - start < 15


def test_quiet_flag_after_the_subcommand_and_library_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    from kmq.cli import build_parser
    from kmq.progress import quiet_libraries

    parser = build_parser()
    base = ["select", "pool.jsonl", "--budget", "5", "--out", "o"]
    assert parser.parse_args([*base, "-q"]).quiet
    assert parser.parse_args(["-q", *base]).quiet
    assert not parser.parse_args(base).quiet
    assert parser.parse_args(["score", "p.jsonl", "--quality", "length", "--out", "s", "-q"]).quiet
    hub = pytest.importorskip("huggingface_hub")
    transformers = pytest.importorskip("transformers")
    hub.utils.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    with quiet_libraries():
        assert hub.utils.are_progress_bars_disabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert not hub.utils.are_progress_bars_disabled()
    assert transformers.utils.logging.is_progress_bar_enabled()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
