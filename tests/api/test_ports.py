"""What the api's two ports accept from hostile clients, over raw sockets to the real
gunicorn master and its workers: the metrics listener (the master's, ``API_METRICS_PORT``)
bounds its connections' time and number and sends no banner; the traffic port's protocol
refusals are all counted and logged sampled (docs/limits.md).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from covid_stats_api.serving.metrics_server import CONNECTION_SECONDS, MAX_CONNECTIONS
from covid_stats_runtime.protocol import (
    REFUSALS_LOGGED_PER_INTERVAL,
    UVICORN_INVALID_REQUEST_MESSAGE,
)
from devstack.procs import wait_until
from support import (
    ApiUrl,
    Process,
    check_error_body,
    log_events,
    metric_samples,
    raw_exchange,
    start_api,
    summary,
)


@pytest.fixture
def api(service_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Process, ApiUrl]]:
    process, base = start_api(service_env, tmp_path)
    yield process, base
    process.stop()


def _metrics_port(api: ApiUrl) -> int:
    port = urlsplit(api.metrics).port
    assert port is not None
    return port


def test_the_metrics_listener_answers_http11_without_a_banner(
    api: tuple[Process, ApiUrl],
) -> None:
    _, base = api
    port, path = _metrics_port(base), urlsplit(base.metrics).path
    scrape = raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert scrape.raw.startswith(b"HTTP/1.1 200 ")
    assert "server" not in scrape.headers
    assert scrape.headers["connection"] == "close"
    assert b"covid_stats_api_build_info" in scrape.body
    # http.server's own refusals: no banner either, and the error shape.
    for data, status, code in (
        (b"GET / HTTP/x.y\r\n\r\n", 400, "bad_request"),
        (f"GET /{'p' * 70_000} HTTP/1.1\r\n\r\n".encode(), 414, "uri_too_long"),
        (
            f"GET {path} HTTP/1.1\r\n".encode() + b"X-A: b\r\n" * 101 + b"\r\n",
            431,
            "headers_too_large",
        ),
    ):
        refused = raw_exchange(port, data)
        assert refused.status == status, refused.raw[:300]
        assert "server" not in refused.headers
        check_error_body(refused.body, status, code)


def test_the_metrics_listener_bounds_its_connections_in_time_and_number(
    api: tuple[Process, ApiUrl],
) -> None:
    process, base = api
    port = _metrics_port(base)
    closed_after: list[float] = []
    opened = time.monotonic()
    # All its threads taken: silent connections, and one that trickles a request (each byte
    # well within any per-read timeout).
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS - 1)]
    trickler = socket.create_connection(("127.0.0.1", port))
    stop = threading.Event()

    def trickle() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"s" * 1000:
            if stop.wait(0.25):
                return
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # One more: refused at once, not queued behind them.
        wait_until(lambda: len(_established(process, port)) >= MAX_CONNECTIONS, 5, what="accepted")
        refused = raw_exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n", timeout=5)
        assert refused.status == 503, refused.raw[:300]
        check_error_body(refused.body, 503, "unavailable")
        # Each held connection is closed once its time is up, the trickling one too.
        for sock in [*silent, trickler]:
            sock.settimeout(CONNECTION_SECONDS + 10)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            closed_after.append(time.monotonic() - opened)
    finally:
        stop.set()
        for sock in [*silent, trickler]:
            sock.close()
    assert max(closed_after) < CONNECTION_SECONDS + 5
    # Then a scrape is served again.
    assert httpx.get(base.metrics).status_code == 200
    summary(
        f"metrics listener: {MAX_CONNECTIONS} held connections (one trickling) closed after"
        f" {min(closed_after):.2f} to {max(closed_after):.2f} s (CONNECTION_SECONDS"
        f" {CONNECTION_SECONDS:g}); connection {MAX_CONNECTIONS + 1} answered 503 at once"
    )


def _established(process: Process, port: int) -> list[object]:
    import psutil  # type: ignore[import-untyped]  # no stubs in the venv

    return [
        c
        for c in psutil.Process(process.proc.pid).net_connections()
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


def test_protocol_refusals_are_counted_and_logged_sampled(api: tuple[Process, ApiUrl]) -> None:
    process, base = api
    port = int(base.rsplit(":", 1)[1])
    sent = 4 * REFUSALS_LOGGED_PER_INTERVAL
    for _ in range(sent):
        answer = raw_exchange(port, b"NOT HTTP\r\n\r\n")
        assert answer.status == 400
        check_error_body(answer.body, 400, "bad_request")
    big = raw_exchange(port, b"GET / HTTP/1.1\r\nCookie: " + b"c" * 100_000 + b"\r\n\r\n")
    assert big.status == 431

    def counted(status: str) -> float:
        samples = metric_samples(httpx.get(base.metrics).text)
        return samples.get(
            ("covid_stats_api_invalid_requests_total", frozenset({("status", status)})), 0
        )

    wait_until(lambda: counted("400") == sent and counted("431") == 1, 10, what="all counted")
    output = process.output()
    logged = log_events(output, "invalid_request")
    # Each of the two workers logs the first REFUSALS_LOGGED_PER_INTERVAL of the interval.
    assert REFUSALS_LOGGED_PER_INTERVAL <= len(logged) <= 2 * REFUSALS_LOGGED_PER_INTERVAL
    assert {(e["status"], e["code"]) for e in logged} <= {
        (400, "bad_request"),
        (431, "headers_too_large"),
    }
    assert UVICORN_INVALID_REQUEST_MESSAGE not in output
    summary(f"api: {sent + 1} protocol refusals, {len(logged)} log lines (2 workers)")
