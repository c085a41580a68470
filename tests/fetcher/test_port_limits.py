"""The fetcher's HTTP port against hostile clients, over raw sockets to the real
``stats-fetcher run`` process: the api's limits (one implementation,
``covid_stats_runtime.protocol``), its refusals counted and logged sampled, and ``/readyz``'s
details for the token only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import structlog

from covid_stats_runtime.protocol import (
    REFUSALS_LOGGED_PER_INTERVAL,
    UVICORN_INVALID_REQUEST_MESSAGE,
    RefusalLog,
)
from covid_stats_runtime.settings import PortSettings
from devstack.procs import wait_until
from support import Fetcher, RawAnswer, check_error_body, log_events, raw_exchange, summary

HEAD_LIMIT = PortSettings.model_fields["http_max_request_head_bytes"].default
REQUEST_TIMEOUT = 1.0  # HTTP_REQUEST_TIMEOUT_SECONDS of the fetcher under test
NEW_CONNECTION = 1.0  # HTTP_NEW_CONNECTION_TIMEOUT_SECONDS
INVALID = "covid_stats_fetcher_invalid_requests_total"


@pytest.fixture
def fetcher(published_env: dict[str, str], fetcher_factory: Any) -> Fetcher:
    """A running fetcher over published data (published_env: the template's, cloned), so its
    first refresh is five conditional requests, not a load of the whole upstream: these tests
    are about its port."""
    env = {
        **published_env,
        "HTTP_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        "HTTP_NEW_CONNECTION_TIMEOUT_SECONDS": str(NEW_CONNECTION),
    }
    started: Fetcher = fetcher_factory(env)
    return started


def _port(fetcher: Fetcher) -> int:
    return int(fetcher.url.rsplit(":", 1)[1])


def _get(target: str, *headers: bytes) -> bytes:
    lines = [f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode(), *(h + b"\r\n" for h in headers)]
    return b"".join([*lines, b"\r\n"])


def _refused(answer: RawAnswer, status: int, code: str) -> str:
    assert answer.status == status, answer.raw[:300]
    assert answer.headers["connection"] == "close"
    assert "server" not in answer.headers
    return check_error_body(answer.body, status, code).message


def test_oversized_heads_are_refused_as_the_api_refuses_them(fetcher: Fetcher) -> None:
    port = _port(fetcher)
    one_mib = _refused(
        raw_exchange(port, _get("/healthz", b"Cookie: " + b"c" * 1024 * 1024)),
        431,
        "headers_too_large",
    )
    assert str(HEAD_LIMIT) in one_mib
    _refused(raw_exchange(port, _get("/healthz", *[b"X-A: b"] * 5000)), 431, "headers_too_large")
    _refused(raw_exchange(port, _get("/" + "p" * 20_000)), 414, "uri_too_long")
    _refused(raw_exchange(port, b"\x16\x03\x01\x00\xa5\x01\x00" + b"\x00" * 64), 400, "bad_request")
    # Just under the limit: served.
    ok = raw_exchange(
        port, _get("/healthz", b"Cookie: " + b"c" * (HEAD_LIMIT - 200), b"Connection: close")
    )
    assert ok.status == 200
    assert json.loads(ok.body) == {"status": "ok"}
    assert fetcher.metric(INVALID, status="431") == 2
    assert fetcher.metric(INVALID, status="414") == 1
    assert fetcher.metric(INVALID, status="400") == 1
    assert fetcher.process.proc.poll() is None


def test_silent_and_partial_connections_are_closed(fetcher: Fetcher) -> None:
    port = _port(fetcher)
    # Connects and sends nothing: closed (recv sees the end, not its own 10 s timeout).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        started = time.monotonic()
        assert silent.recv(1024) == b""
        silent_for = time.monotonic() - started
    # Half a head, then nothing: 408 in the error shape, and the connection closes.
    started = time.monotonic()
    answer = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=10)
    partial_for = time.monotonic() - started
    message = _refused(answer, 408, "request_timeout")
    assert f"{REQUEST_TIMEOUT:g} seconds" in message
    assert fetcher.metric(INVALID, status="408") == 1
    summary(
        f"fetcher port: a silent connection closed after {silent_for:.2f} s, a partial head"
        f" answered 408 after {partial_for:.2f} s (timeouts {NEW_CONNECTION:g} s and"
        f" {REQUEST_TIMEOUT:g} s)"
    )


def test_refusals_are_logged_sampled_and_all_counted(fetcher: Fetcher) -> None:
    port = _port(fetcher)
    sent = 3 * REFUSALS_LOGGED_PER_INTERVAL
    for _ in range(sent):
        _refused(raw_exchange(port, b"NOT HTTP\r\n\r\n"), 400, "bad_request")
    wait_until(
        lambda: fetcher.metric(INVALID, status="400") == sent, 10, what="every refusal counted"
    )
    output = fetcher.process.output()
    logged = log_events(output, "invalid_request")
    assert len(logged) == REFUSALS_LOGGED_PER_INTERVAL
    assert {(line["status"], line["code"], line["client"]) for line in logged} == {
        (400, "bad_request", "127.0.0.1")
    }
    assert UVICORN_INVALID_REQUEST_MESSAGE not in output


def test_readyz_details_need_the_token(fetcher: Fetcher) -> None:
    assert fetcher.token
    wait_until(lambda: fetcher.ready().get("postgres") == "ok", 30, what="the fetcher ready")
    bare = httpx.get(f"{fetcher.url}/readyz")
    assert bare.status_code == 200
    assert bare.json() == {"status": "ready"}
    wrong = httpx.get(f"{fetcher.url}/readyz", headers={"Authorization": "Bearer nope"})
    assert wrong.json() == {"status": "ready"}
    detailed = fetcher.ready()
    assert detailed["status"] == "ready"
    assert {"leader", "redis", "postgres"} <= set(detailed)


def test_the_refusal_log_sums_up_what_it_did_not_write() -> None:
    """The sampling itself, on a real event loop with a short interval: the first
    ``per_interval`` refusals a line each, the rest one summary line when the interval ends,
    then a new interval logs again."""

    async def scenario() -> list[MutableMapping[str, Any]]:
        loop = asyncio.get_running_loop()
        refusals = RefusalLog(per_interval=2, interval=0.2)
        with structlog.testing.capture_logs() as captured:
            for status in (400, 400, 431, 400, 408):
                refusals.refused(loop, status, "x", "192.0.2.1")
            deadline = loop.time() + 5
            while not any(e["event"] == "invalid_requests_suppressed" for e in captured):
                assert loop.time() < deadline, captured
                await asyncio.sleep(0.02)
            refusals.refused(loop, 400, "x", "192.0.2.1")
        return captured

    events = asyncio.run(scenario())
    assert [e["event"] for e in events] == [
        "invalid_request",
        "invalid_request",
        "invalid_requests_suppressed",
        "invalid_request",
    ]
    assert events[2]["count"] == 3
    assert events[2]["by_status"] == {"400": 1, "408": 1, "431": 1}
