"""Hostile clients against the real api (gunicorn, 2 uvicorn workers), over raw sockets.

Oversized request heads, huge query strings, clients that trickle bytes (slowloris) and
hundreds of idle connections are bounded by the server adapter's protocol
(``covid_stats_api.serving.server.uvicorn_adapter``): the client gets a 4xx in the api's
error shape or a closed connection, and the workers neither crash (their pids stay the same)
nor stop serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from devstack.procs import wait_until
from stacks import Template, cloned_env
from support import (
    Process,
    Upstream,
    check_error_body,
    receive_answer,
    start_api,
)

REQUEST_TIMEOUT = 2.0  # HTTP_REQUEST_TIMEOUT_SECONDS of the api under test
KEEPALIVE = 30  # GUNICORN_KEEPALIVE_SECONDS: long, as behind a load balancer
NEW_CONNECTION = 2  # HTTP_NEW_CONNECTION_TIMEOUT_SECONDS: what bounds silent connections
HEAD_LIMIT = 16384  # HTTP_MAX_REQUEST_HEAD_BYTES (the default)
DOCUMENT = "/v1/us/current.json"


@dataclass
class Api:
    process: Process
    base: str
    port: int

    def workers(self) -> set[int]:
        return {p.pid for p in psutil.Process(self.process.proc.pid).children()}


@pytest.fixture(scope="module")
def api(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    """One api over the session's published data (a clone: tests/stacks.py) for the module
    (its tests run one after the other)."""
    with cloned_env(
        template,
        redis_server_url,
        upstream_server,
        HTTP_REQUEST_TIMEOUT_SECONDS=str(REQUEST_TIMEOUT),
        GUNICORN_KEEPALIVE_SECONDS=str(KEEPALIVE),
        HTTP_NEW_CONNECTION_TIMEOUT_SECONDS=str(NEW_CONNECTION),
    ) as env:
        process, base = start_api(env, tmp_path_factory.mktemp("hostile"))
        yield Api(process, base, int(base.rsplit(":", 1)[1]))
        process.stop()


@pytest.fixture
def same_workers(api: Api) -> Iterator[None]:
    """After the test: the same worker processes answer normally (none crashed or was
    replaced), and nothing raised in the api."""
    before = api.workers()
    assert len(before) == 2
    yield
    assert api.workers() == before
    for _ in range(10):  # fresh connections: both workers
        response = httpx.get(f"{api.base}{DOCUMENT}", headers={"Connection": "close"})
        assert response.status_code == 200
        assert response.json()[0]["date"]
    assert "Traceback" not in api.process.output()


@dataclass
class Answer:
    status: int | None  # None: the connection closed (or was reset) without an answer
    headers: dict[str, str]
    body: bytes


def _parse(raw: bytes) -> Answer:
    if not raw:
        return Answer(None, {}, b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Answer:
    """Send ``data`` on a new connection, read until the server closes it."""
    return _parse(_raw(port, data, timeout))


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may refuse and close before all of it is sent.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def _error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert answer.headers["access-control-allow-origin"] == "*"
    check_error_body(answer.body, status, code)
    body: dict[str, Any] = json.loads(answer.body)
    return body


def _get(target: str, *headers: bytes) -> bytes:
    return b"".join(
        [f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode(), *(h + b"\r\n" for h in headers), b"\r\n"]
    )


# -- oversized heads -----------------------------------------------------------------------

OVERSIZED = {
    "a 100 KB query string": (_get("/v1/us/daily.json?fields=" + "a" * 100_000), 414),
    "a 20 KB path": (_get("/" + "p" * 20_000), 414),
    "one 100 KB header": (_get(DOCUMENT, b"X-Big: " + b"a" * 100_000), 431),
    "one 1 MB header": (_get(DOCUMENT, b"Cookie: " + b"c" * 1_000_000), 431),
    "5,000 small headers": (_get(DOCUMENT, *[b"X-A: b"] * 5000), 431),
    # Whole in one socket read: caught as the headers are parsed, not only by counting reads.
    "a complete 20 KB head": (_get(DOCUMENT, b"X-Mid: " + b"m" * 20_000), 431),
}


@pytest.mark.parametrize("case", OVERSIZED, ids=list(OVERSIZED))
def test_an_oversized_request_head_is_refused_in_the_error_shape(
    api: Api, same_workers: None, case: str
) -> None:
    data, status = OVERSIZED[case]
    code = {414: "uri_too_long", 431: "headers_too_large"}[status]
    body = _error(exchange(api.port, data), status, code)
    assert str(HEAD_LIMIT) in body["error"]["message"]


def test_a_head_within_the_limit_is_served_and_garbage_gets_a_json_400(
    api: Api, same_workers: None
) -> None:
    # Just under the limit (a big cookie, as browsers send): served.
    answer = exchange(
        api.port,
        _get(DOCUMENT, b"Cookie: " + b"c" * (HEAD_LIMIT - 200), b"Connection: close"),
    )
    assert answer.status == 200
    assert json.loads(answer.body)[0]["date"]
    # Not HTTP at all: uvicorn's plain-text 400 becomes the api's error shape.
    tls_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64
    _error(exchange(api.port, tls_hello), 400, "bad_request")
    _error(exchange(api.port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400, "bad_request")


def test_pipelined_requests_are_served_and_an_oversized_one_among_them_is_refused(
    api: Api, same_workers: None
) -> None:
    three = _get(DOCUMENT) * 2 + _get(DOCUMENT, b"Connection: close")
    raw = _raw(api.port, three)
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    # A head that begins mid-read, after a request in the same read, is measured too: the
    # first is answered, the oversized one is not served and the connection closes.
    raw = _raw(api.port, _get(DOCUMENT) + _get(DOCUMENT, b"X-Mid: " + b"m" * 20_000))
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert raw.count(b"HTTP/1.1 200 OK") == 1


# -- slow clients ----------------------------------------------------------------------------


async def _trickle(
    port: int,
    prefix: bytes,
    data: bytes,
    interval: float,
    give_up: float,
    sending: asyncio.Semaphore | None = None,
) -> tuple[float, Answer]:
    """Send ``prefix``, then ``data`` one byte every ``interval`` s, until the server closes
    the connection; returns the seconds that took and the answer. ``sending`` is released
    once the connection is open and its first bytes are written."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(prefix)
    if sending is not None:
        sending.release()
    received = bytearray()

    async def read() -> None:
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionResetError:
            pass

    reading = asyncio.create_task(read())
    try:
        for byte in data:
            if reading.done() or time.monotonic() - started > give_up:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({reading}, timeout=interval)
        await asyncio.wait_for(reading, max(0.1, give_up - (time.monotonic() - started)))
    finally:
        writer.close()
    return time.monotonic() - started, _parse(bytes(received))


async def _normal_requests(base: str, count: int) -> list[float]:
    """``count`` GETs of a document, one after the other on fresh connections: latencies."""
    latencies = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(count):
            started = time.monotonic()
            response = await client.get(f"{base}{DOCUMENT}")
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
    return latencies


@pytest.mark.load
def test_slowloris_clients_are_cut_off_and_others_are_still_served(
    api: Api, same_workers: None
) -> None:
    slow_head = _get(DOCUMENT, b"X-Padding: " + b"p" * 4000)  # 800 s at this pace
    # A whole head promising a body, which then trickles: answered, then cut off.
    body_head = f"POST {DOCUMENT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    give_up = 30.0

    async def attack() -> tuple[list[tuple[float, Answer]], list[float]]:
        connected = asyncio.Semaphore(0)
        slow = [_trickle(api.port, b"", slow_head, 0.2, give_up, connected) for _ in range(60)]
        slow += [
            _trickle(api.port, body_head.encode(), b"b" * 100_000, 0.2, give_up, connected)
            for _ in range(10)
        ]
        tasks = [asyncio.ensure_future(t) for t in slow]
        async with asyncio.timeout(10):  # every slow client connected and sending
            for _ in tasks:
                await connected.acquire()
        latencies = await _normal_requests(api.base, 40)
        return await asyncio.gather(*tasks), latencies

    results, latencies = asyncio.run(attack())
    heads, bodies = results[:60], results[60:]
    for seconds, answer in heads:
        _error(answer, 408, "request_timeout")
        assert seconds < give_up
    for seconds, answer in bodies:
        assert answer.status == 405  # answered at once, then closed: the body never came
        assert seconds < give_up
    cut = sorted(s for s, _ in heads)
    print(
        f"\nslowloris: 60 heads cut after {cut[0]:.2f}..{cut[-1]:.2f} s "
        f"(HTTP_REQUEST_TIMEOUT_SECONDS={REQUEST_TIMEOUT}); slow bodies closed after "
        f"{min(s for s, _ in bodies):.2f}..{max(s for s, _ in bodies):.2f} s; meanwhile 40 "
        f"normal requests, slowest {max(latencies) * 1000:.1f} ms"
    )


@pytest.mark.load
def test_many_idle_connections_do_not_stop_a_normal_client_and_are_closed(
    api: Api, same_workers: None
) -> None:
    idle = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection(("127.0.0.1", api.port), timeout=30))
        opened = time.monotonic()
        latencies = asyncio.run(_normal_requests(api.base, 40))
        # The server closes every idle connection by itself: each reads EOF.
        closed_after = []
        for sock in idle:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
            closed_after.append(time.monotonic() - opened)
        print(
            f"\n500 idle connections: 40 normal requests meanwhile, slowest "
            f"{max(latencies) * 1000:.1f} ms; all closed by the server within "
            f"{max(closed_after):.2f} s (HTTP_NEW_CONNECTION_TIMEOUT_SECONDS={NEW_CONNECTION}, "
            f"GUNICORN_KEEPALIVE_SECONDS={KEEPALIVE})"
        )
        # By the new-connection bound, not the (long) keep-alive one.
        assert max(closed_after) < KEEPALIVE / 2, closed_after
    finally:
        for sock in idle:
            sock.close()
    # The workers hold none of them any more.
    wait_until(
        lambda: all(
            not [
                c
                for c in psutil.Process(pid).net_connections()
                if c.status == "ESTABLISHED" and c.laddr.port == api.port
            ]
            for pid in api.workers()
        ),
        30,
        what="the workers to hold no connection",
    )


def test_a_connection_idle_after_an_answer_is_kept_for_the_keep_alive_period(
    api: Api, same_workers: None
) -> None:
    """A load balancer reuses its idle connections for up to its own idle timeout (60 s for ALB
    and ingress-nginx): the api keeps one open that long after an answer (GUNICORN_KEEPALIVE_
    SECONDS), longer than a new connection may stay silent (HTTP_NEW_CONNECTION_TIMEOUT_SECONDS)."""
    request = f"GET {DOCUMENT} HTTP/1.1\r\nHost: api\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            answer = _parse(receive_answer(sock))
            assert answer.status == 200, answer
            time.sleep(NEW_CONNECTION + 1.5)  # past the new-connection bound
