"""A load generator for the fault tests (tests/system/test_faults.py) and ``make soak``: concurrent
keep-alive clients in a background thread, every request's outcome recorded with its
timestamps.

Each client holds at most one keep-alive HTTP/1.1 connection (``_Connection``: asyncio streams
and a minimal client written for this, far less CPU per request than httpx took, so the
load's own cost no longer competes with the servers under test), so the connection a request
went out on is known: its ``connected`` time is when that TCP connection was established,
whether it was opened for this request or reused. A client that finds its connection closed
by the server while idle opens a new one (as every HTTP client does); one whose request got
no complete answer records the error, by httpx's name for it (``ConnectError``,
``RemoteProtocolError``, ``ReadTimeout``, ...), and goes on on a new connection. Every
request asks for the codings httpx asked for (``ACCEPT_ENCODING``) and its body is decoded
before it is digested. tests/devstack/test_load.py checks this accounting against a server
whose answers it knows.

Timestamps are ``time.monotonic()`` values, comparable with the test's own clock. With
``rate`` the clients share one schedule of evenly spaced request slots (a fixed request
rate, as long as the server keeps up); without it they send as fast as answers come back.
With ``keep_outcomes=False`` (long runs) only the counts and the latencies are kept.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import math
import select
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import brotli  # type: ignore[import-untyped]  # no stubs published

from devstack.procs import wait_until


@dataclass(frozen=True, slots=True)
class Unique:
    """A kind of request whose path differs every time: ``make(n)`` for the n-th one (so no
    cache has its answer yet)."""

    kind: str
    make: Callable[[int], str]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request. ``status`` is None when no complete response arrived (``error`` says
    why: the exception's class name). ``kind`` is the path as given to ``Load`` (a
    ``Unique``'s kind for those)."""

    client: int
    kind: str
    path: str
    connected: float  # when the connection it went out on was established (nan: none was)
    started: float
    finished: float
    status: int | None
    error: str | None
    source: str | None  # the X-Data-Source header
    digest: str  # sha256 of the body, first 16 hex digits ("" without a body)
    retry_after: str | None

    @property
    def ok(self) -> bool:
        """A complete 2xx or 304 answer."""
        return self.status is not None and (200 <= self.status < 300 or self.status == 304)


# The codings every request accepts, and ``_decoded`` undoes.
ACCEPT_ENCODING = "gzip, deflate, br"


class _Failure(Exception):
    """A request without a complete answer; ``name`` is what its outcome records (httpx's
    names for the same failures, which the reports used before)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: dict[str, str]  # names in lower case; repeated fields joined by ", "
    body: bytes  # decoded
    close: bool  # the connection must not be used again


def _decoded(body: bytes, coding: str) -> bytes:
    """``body`` with its Content-Encoding undone (the last coding applied first)."""
    for name in reversed([c.strip().lower() for c in coding.split(",") if c.strip()]):
        try:
            if name in ("gzip", "x-gzip"):
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            elif name == "deflate":
                try:
                    body = zlib.decompress(body)
                except zlib.error:
                    body = zlib.decompress(body, -zlib.MAX_WBITS)
            elif name == "br":
                body = brotli.decompress(body)
            elif name != "identity":
                raise _Failure("DecodingError", f"unknown content-encoding {name!r}")
        except (zlib.error, brotli.error) as exc:
            raise _Failure("DecodingError", str(exc)) from exc
    return body


class _Connection:
    """One keep-alive HTTP/1.1 connection (asyncio streams): a minimal client that sends a
    GET and reads its whole answer (Content-Length, chunked, or until the server closes).
    A read waits at most ``wait`` seconds for each piece of the answer, a connect as long
    (httpx's timeouts); every failure raises ``_Failure``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.connected = time.monotonic()  # when the TCP connection was established
        self._socket = writer.get_extra_info("socket")

    @classmethod
    async def open(cls, host: str, port: int, wait: float) -> _Connection:
        try:
            async with asyncio.timeout(wait):
                reader, writer = await asyncio.open_connection(host, port, limit=2**20)
        except TimeoutError as exc:
            raise _Failure("ConnectTimeout") from exc
        except OSError as exc:
            raise _Failure("ConnectError", str(exc)) from exc
        return cls(reader, writer)

    def closed_while_idle(self) -> bool:
        """Whether the server closed (or wrote on) the connection since its last answer: an
        idle connection is never readable (httpcore's check before it reuses one)."""
        if self.reader.at_eof() or self.reader.exception() is not None:
            return True
        if self.writer.is_closing():
            return True
        readable, _, _ = select.select([self._socket], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, head: bytes, wait: float, close_after: bool) -> _Answer:
        """Send the request ``head`` (a GET: no body) and read its answer."""
        try:
            self.writer.write(head)
            async with asyncio.timeout(wait):
                await self.writer.drain()
        except TimeoutError as exc:
            raise _Failure("WriteTimeout") from exc
        except OSError as exc:
            raise _Failure("WriteError", str(exc)) from exc
        try:
            return await self._answer(wait, close_after)
        except TimeoutError as exc:
            raise _Failure("ReadTimeout") from exc
        except asyncio.IncompleteReadError as exc:
            what = "a complete head" if exc.expected is None else "a complete body"
            raise _Failure("RemoteProtocolError", f"closed before {what}") from exc
        except asyncio.LimitOverrunError as exc:
            raise _Failure("RemoteProtocolError", "a head or chunk line too long") from exc
        except (ValueError, IndexError) as exc:  # a malformed status line, field or size
            raise _Failure("RemoteProtocolError", str(exc)) from exc
        except OSError as exc:  # reset
            raise _Failure("ReadError", str(exc)) from exc

    async def _read(self, until: bytes, wait: float) -> bytes:
        async with asyncio.timeout(wait):
            return await self.reader.readuntil(until)

    async def _read_exactly(self, count: int, wait: float) -> bytes:
        pieces: list[bytes] = []
        while count > 0:
            async with asyncio.timeout(wait):
                piece = await self.reader.read(min(count, 2**20))
            if not piece:
                raise asyncio.IncompleteReadError(b"".join(pieces), count)
            pieces.append(piece)
            count -= len(piece)
        return b"".join(pieces)

    async def _answer(self, wait: float, close_after: bool) -> _Answer:
        while True:  # 1xx interim answers are skipped (none is expected)
            head = await self._read(b"\r\n\r\n", wait)
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, code, *_ = status_line.split(" ", 2)
            if not version.startswith("HTTP/1.") or len(code) != 3:
                raise ValueError(f"not an HTTP/1.x status line: {status_line!r}")
            status = int(code)
            if status >= 200 or status == 101:
                break
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"a header line without a colon: {line!r}")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        # A 500 is what an unhandled exception leaves (Starlette answers it, then re-raises),
        # and uvicorn then closes the connection without saying so: a request sent on it at
        # once would meet the close. httpx, slower between requests, mostly saw the close
        # first; a client this fast must not count on that, so it opens a new connection.
        close = close_after or "close" in connection or status == 500
        if version == "HTTP/1.0" and "keep-alive" not in connection:
            close = True
        pieces: list[bytes] = []
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await self._read(b"\r\n", wait)).split(b";")[0].strip(), 16)
                if size == 0:
                    while await self._read(b"\r\n", wait) != b"\r\n":  # trailers
                        pass
                    break
                pieces.append(await self._read_exactly(size, wait))
                if await self._read_exactly(2, wait) != b"\r\n":
                    raise ValueError("a chunk not followed by CRLF")
            body = b"".join(pieces)
        elif "content-length" in headers:
            body = await self._read_exactly(int(headers["content-length"]), wait)
        else:  # until the server closes
            while True:
                async with asyncio.timeout(wait):
                    piece = await self.reader.read(2**20)
                if not piece:
                    break
                pieces.append(piece)
            body, close = b"".join(pieces), True
        return _Answer(status, headers, _decoded(body, headers.get("content-encoding", "")), close)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16] if body else ""


class Load:
    """``with Load(base, paths) as load:`` runs ``clients`` clients until the block ends.

    ``paths`` are requested round robin, each client starting at its own offset; a ``Unique``
    stands for a new path each time.
    ``headers`` go with every request. ``outcomes()`` returns what was recorded so far.
    """

    def __init__(
        self,
        base: str,
        paths: Sequence[str | Unique],
        *,
        clients: int = 16,
        rate: float | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        keep_outcomes: bool = True,
    ) -> None:
        if not paths:
            raise ValueError("no paths to request")
        self.base = base.rstrip("/")
        url = urllib.parse.urlsplit(self.base)
        if url.scheme != "http" or not url.hostname or url.path:
            raise ValueError(f"an http://host[:port] base URL, not {base!r}")
        self._host, self._port = url.hostname, url.port or 80
        # What httpx, the client this one replaced, sent: the same representations asked
        # for (and decoded), the caller's headers on top (``Connection: close`` included).
        fields = {
            "host": ("Host", url.netloc),
            "accept": ("Accept", "*/*"),
            "accept-encoding": ("Accept-Encoding", ACCEPT_ENCODING),
            "connection": ("Connection", "keep-alive"),
            "user-agent": ("User-Agent", "covid-stats-load"),
        }
        fields.update({name.lower(): (name, value) for name, value in (headers or {}).items()})
        self._head_fields = "".join(f"{n}: {v}\r\n" for n, v in fields.values()).encode() + b"\r\n"
        self._close_after = "close" in fields["connection"][1].lower()
        self.paths = list(paths)
        self.clients = clients
        self.rate = rate
        self.timeout = timeout
        self.headers = headers or {}
        self.keep_outcomes = keep_outcomes
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}  # "ok", "failed", and per status / error
        self._latencies = array.array("d")  # seconds, of every request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._slot = 0
        self._sent = 0
        self._started = 0.0

    # -- running ---------------------------------------------------------------------------

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 10)
            if self._thread.is_alive():
                raise RuntimeError("the load generator did not stop")
        if self._error is not None:
            raise RuntimeError("the load generator failed") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self._error = exc

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _client(self, number: int) -> None:
        connection: _Connection | None = None
        index = number
        try:
            while not self._stop.is_set():
                if self.rate is not None and not await self._wait_for_slot():
                    break
                entry = self.paths[index % len(self.paths)]
                index += 1
                self._sent += 1
                if isinstance(entry, Unique):
                    kind, path = entry.kind, entry.make(self._sent)
                else:
                    kind = path = entry
                started = time.monotonic()
                if connection is not None and connection.closed_while_idle():
                    connection.close()  # closed by the server while idle: a new one
                    connection = None
                try:
                    if connection is None:
                        connection = await _Connection.open(self._host, self._port, self.timeout)
                    answer = await connection.exchange(
                        self._request_head(path), self.timeout, self._close_after
                    )
                except _Failure as failure:
                    # A connect error: no connection was established for this request.
                    on = math.nan if connection is None else connection.connected
                    self._record(
                        Outcome(
                            number,
                            kind,
                            path,
                            on,
                            started,
                            time.monotonic(),
                            None,
                            failure.name,
                            None,
                            "",
                            None,
                        )
                    )
                    if connection is None:
                        await asyncio.sleep(0.01)  # no busy loop while nothing listens
                    else:
                        connection.close()  # the next request opens a new connection
                        connection = None
                    continue
                self._record(
                    Outcome(
                        number,
                        kind,
                        path,
                        connection.connected,
                        started,
                        time.monotonic(),
                        answer.status,
                        None,
                        answer.headers.get("x-data-source"),
                        body_digest(answer.body),
                        answer.headers.get("retry-after"),
                    )
                )
                if answer.close:
                    connection.close()
                    connection = None
        finally:
            if connection is not None:
                connection.close()

    def _request_head(self, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\n".encode() + self._head_fields

    async def _wait_for_slot(self) -> bool:
        """Sleep until this request's slot of the fixed-rate schedule; False when stopping."""
        assert self.rate is not None
        slot = self._slot
        self._slot += 1
        due = self._started + slot / self.rate
        while (delay := due - time.monotonic()) > 0:
            if self._stop.is_set():
                return False
            await asyncio.sleep(min(delay, 0.1))
        return not self._stop.is_set()

    def _record(self, outcome: Outcome) -> None:
        key = str(outcome.status) if outcome.status is not None else str(outcome.error)
        with self._lock:
            if self.keep_outcomes:
                self._outcomes.append(outcome)
            self._latencies.append(outcome.finished - outcome.started)
            self._counts[key] = self._counts.get(key, 0) + 1
            verdict = "ok" if outcome.ok else "failed"
            self._counts[verdict] = self._counts.get(verdict, 0) + 1

    # -- reading ---------------------------------------------------------------------------

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def latencies(self) -> list[float]:
        """Every request's duration so far, in seconds, in the order they finished."""
        with self._lock:
            return self._latencies.tolist()

    def counts(self) -> dict[str, int]:
        """Requests by verdict (``ok``, ``failed``) and by status code or error name."""
        with self._lock:
            return dict(self._counts)

    def wait_for(
        self,
        predicate: Callable[[Outcome], bool],
        timeout: float,
        *,
        since: float = -math.inf,
        what: str = "an answer",
    ) -> Outcome:
        """The first outcome started at or after ``since`` that satisfies ``predicate``,
        waiting up to ``timeout`` seconds for it to be recorded."""
        seen = 0
        found: list[Outcome] = []

        def recorded() -> bool:
            nonlocal seen
            self._raise_if_failed()
            with self._lock:
                fresh = self._outcomes[seen:]
                seen = len(self._outcomes)
            found.extend(o for o in fresh if o.started >= since and predicate(o))
            return bool(found)

        wait_until(recorded, timeout, interval=0.02, what=what)
        return found[0]

    def wait_requests(self, count: int, timeout: float, *, since: float = -math.inf) -> None:
        """Wait until ``count`` requests started after ``since`` have finished."""

        def finished() -> bool:
            self._raise_if_failed()
            return sum(1 for o in self.outcomes() if o.started >= since) >= count

        wait_until(finished, timeout, interval=0.02, what=f"{count} requests")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("the load generator failed") from self._error


def in_flight_at(
    outcomes: Iterable[Outcome], moment: float, until: float | None = None
) -> list[Outcome]:
    """The requests started before ``moment`` and finished after it; with ``until``, those
    in flight at any instant from ``moment`` to ``until`` (a fault that takes a while to
    inflict: a server killed and reaped)."""
    end = moment if until is None else until
    return [o for o in outcomes if o.started <= end and moment <= o.finished]
