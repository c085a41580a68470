"""The load generator (devstack.load) against a real TCP server whose answers are known: what
each request's outcome records (status, error, connection, digest of the decoded body,
headers), that a request without a complete answer is counted as failed, and that connections
are kept alive, reopened and closed as HTTP/1.1 says. The fault suite's verdicts are only as
good as this accounting."""

from __future__ import annotations

import gzip
import itertools
import math
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import brotli  # type: ignore[import-untyped]  # no stubs published
import pytest

from devstack.load import ACCEPT_ENCODING, Load, Outcome, Unique, body_digest
from devstack.procs import free_port

pytestmark = [pytest.mark.timeout(60), pytest.mark.unit]  # unit: `make test-fast`

BODY = b'[{"positive": 1}]'


@dataclass
class Seen:
    """What the server saw: connections accepted, request heads (lower-case names)."""

    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)  # ends /stall


def _answer(path: str, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The bytes the server writes for ``path``, and whether it then closes."""
    length = f"Content-Length: {len(BODY)}\r\n".encode()
    if path == "/ok":
        return b"HTTP/1.1 200 OK\r\nX-Data-Source: cache\r\n" + length + b"\r\n" + BODY, False
    if path == "/gzip":
        assert "gzip" in headers["accept-encoding"]
        body = gzip.compress(BODY)
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body, False
    if path == "/br":
        body = brotli.compress(BODY)
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body, False
    if path == "/chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:5], BODY[5:]))
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
            False,
        )
    if path == "/busy":
        return b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", False
    if path == "/not-modified":
        return b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n', False
    if path == "/close":
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + length + b"\r\n" + BODY, True
    if path == "/silent-close":  # kept alive by the head, closed after the answer
        return b"HTTP/1.1 200 OK\r\n" + length + b"\r\n" + BODY, True
    if path == "/crash":  # an exception after the answer: uvicorn closes, says nothing
        return b"HTTP/1.1 500 Internal Server Error\r\n" + length + b"\r\n" + BODY, True
    if path == "/cut":  # a head, then part of the body, then closed
        return b"HTTP/1.1 200 OK\r\n" + length + b"\r\n" + BODY[:5], True
    if path == "/drop":  # closed without an answer
        return b"", True
    if path == "/garbage":
        return b"SSH-2.0-OpenSSH\r\n\r\n", True
    raise AssertionError(path)


@pytest.fixture
def server() -> Iterator[tuple[str, Seen]]:
    """A threaded HTTP/1.1 server on a free port, keep-alive, with the answers of _answer."""
    seen = Seen()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            with seen.lock:
                seen.connections += 1
            while True:
                request_line = self.rfile.readline()
                if not request_line:
                    return
                headers = {}
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                path = request_line.split()[1].decode()
                with seen.lock:
                    seen.requests.append((path, headers))
                if path == "/stall":
                    seen.release.wait(30)
                    return
                data, close = _answer(path, headers)
                self.wfile.write(data)
                self.wfile.flush()
                if close or headers.get("connection") == "close":
                    return

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", 0), Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
        seen.release.set()
        httpd.shutdown()


def _by_kind(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    kinds: dict[str, list[Outcome]] = {}
    for o in outcomes:
        kinds.setdefault(o.kind, []).append(o)
    return kinds


def test_answers_are_recorded_decoded_on_kept_alive_connections(server: tuple[str, Seen]) -> None:
    base, seen = server
    paths = ["/ok", "/gzip", "/br", "/chunked", "/busy", "/not-modified"]
    with Load(base, paths, clients=2) as load:
        load.wait_requests(120, 30)
    outcomes = load.outcomes()
    kinds = _by_kind(outcomes)
    assert set(kinds) == set(paths)
    for path in ("/ok", "/gzip", "/br", "/chunked"):
        assert {(o.status, o.digest, o.error) for o in kinds[path]} == {
            (200, body_digest(BODY), None)
        }, path
        assert all(o.ok for o in kinds[path])
    assert {o.source for o in kinds["/ok"]} == {"cache"}
    assert {(o.status, o.retry_after, o.ok) for o in kinds["/busy"]} == {(503, "7", False)}
    assert {(o.status, o.digest, o.ok) for o in kinds["/not-modified"]} == {(304, "", True)}
    # Two clients, one connection each, kept alive throughout.
    assert seen.connections == 2
    assert {o.client for o in outcomes} == {0, 1}
    for client in (0, 1):
        mine = [o for o in outcomes if o.client == client]
        assert len({o.connected for o in mine}) == 1
        # Its first request opened the connection; the others went out on it, established.
        assert mine[0].started <= mine[0].connected <= mine[0].finished
        assert all(o.connected <= o.started <= o.finished for o in mine[1:])
    counts = load.counts()
    assert counts["failed"] == len(kinds["/busy"])
    assert counts["ok"] == len(outcomes) - len(kinds["/busy"])
    assert counts["503"] == len(kinds["/busy"])
    assert len(load.latencies()) == len(outcomes)
    # The request head: what the server decodes, and the base URL's authority.
    path, headers = seen.requests[0]
    assert headers["accept-encoding"] == ACCEPT_ENCODING
    assert headers["host"] == base.removeprefix("http://")
    assert headers["connection"] == "keep-alive"


def test_a_request_without_a_complete_answer_is_counted_failed(server: tuple[str, Seen]) -> None:
    base, seen = server
    with Load(base, ["/ok", "/cut", "/ok", "/drop", "/ok", "/garbage"], clients=1) as load:
        load.wait_requests(60, 30)
    outcomes = load.outcomes()
    kinds = _by_kind(outcomes)
    for path in ("/cut", "/drop", "/garbage"):
        assert {(o.status, o.error, o.ok, o.digest) for o in kinds[path]} == {
            (None, "RemoteProtocolError", False, "")
        }, path
    failures = len(kinds["/cut"]) + len(kinds["/drop"]) + len(kinds["/garbage"])
    assert load.counts()["failed"] == failures
    assert load.counts()["RemoteProtocolError"] == failures
    assert all(o.ok and o.digest == body_digest(BODY) for o in kinds["/ok"])
    # Each failure closed its connection: the next request went out on a new one, whose
    # ``connected`` the failed request does not share.
    for failed, after in itertools.pairwise(outcomes):
        if not failed.ok:
            assert after.connected > failed.connected
            assert after.connected >= failed.finished
    # Every connection carried a recorded request, and only a failure (or the end) ended one.
    assert seen.connections == len({o.connected for o in outcomes}) == failures + outcomes[-1].ok


def test_a_server_that_does_not_answer_in_time_is_a_read_timeout(server: tuple[str, Seen]) -> None:
    base, _ = server
    with Load(base, ["/stall"], clients=2, timeout=0.3) as load:
        load.wait_requests(2, 10)
    stalled = load.outcomes()[:2]
    assert {(o.status, o.error, o.ok) for o in stalled} == {(None, "ReadTimeout", False)}
    assert all(o.finished - o.started >= 0.3 for o in stalled)
    assert all(not math.isnan(o.connected) for o in stalled)


def test_a_refused_connection_is_a_connect_error_on_no_connection() -> None:
    port = free_port()  # nothing listens
    with Load(f"http://127.0.0.1:{port}", ["/ok"], clients=1) as load:
        load.wait_requests(3, 10)
    refused = load.outcomes()
    assert {(o.status, o.error, o.ok) for o in refused} == {(None, "ConnectError", False)}
    assert all(math.isnan(o.connected) for o in refused)


def test_connection_close_from_either_side_opens_a_new_connection(
    server: tuple[str, Seen],
) -> None:
    base, seen = server
    with Load(base, ["/close", "/ok"], clients=1) as load:  # the server closes after /close
        load.wait_requests(20, 30)
    outcomes = load.outcomes()
    assert all(o.ok and o.digest == body_digest(BODY) for o in outcomes)
    # After each /close the next request goes out on a new connection; after /ok on the same.
    for before, after in itertools.pairwise(outcomes):
        assert (after.connected == before.connected) is (before.kind == "/ok"), (before, after)
    assert seen.connections == len({o.connected for o in outcomes})
    with Load(
        base, [Unique("numbered", lambda n: "/ok")], clients=1, headers={"Connection": "close"}
    ) as load:
        load.wait_requests(10, 30)
    outcomes = load.outcomes()
    assert all(o.ok and o.kind == "numbered" for o in outcomes)
    assert len({o.connected for o in outcomes}) == len(outcomes)
    assert seen.requests[-1][1]["connection"] == "close"


def test_after_a_500_the_next_request_goes_out_on_a_new_connection(
    server: tuple[str, Seen],
) -> None:
    """A 500 (an unhandled exception: uvicorn closes the connection after it, without
    ``Connection: close``) is recorded as failed, and the next request does not meet the close:
    it goes out on a new connection (unpaced, at once) and is answered."""
    base, seen = server
    with Load(base, ["/crash", "/ok"], clients=1) as load:
        load.wait_requests(40, 30)
    outcomes = load.outcomes()
    kinds = _by_kind(outcomes)
    assert {(o.status, o.ok) for o in kinds["/crash"]} == {(500, False)}
    assert all(o.ok for o in kinds["/ok"]), [o.error for o in kinds["/ok"]]
    for before, after in itertools.pairwise(outcomes):
        assert (after.connected == before.connected) is (before.kind == "/ok"), (before, after)
    assert seen.connections == len({o.connected for o in outcomes})


def test_an_idle_connection_the_server_closed_is_not_reused(server: tuple[str, Seen]) -> None:
    """The server closes a kept-alive connection after its answer, without saying so (an idle
    timeout, a drain): the next request goes out on a new connection and gets its answer."""
    base, seen = server
    with Load(base, ["/silent-close"], clients=1, rate=20) as load:  # 50 ms between requests
        load.wait_requests(6, 10)
    outcomes = load.outcomes()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert len({o.connected for o in outcomes}) == len(outcomes)
    assert seen.connections >= len(outcomes)
