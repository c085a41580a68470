"""A load generator for the fault tests (tests/system/test_faults.py) and ``make soak``: concurrent
keep-alive clients in a background thread, every request's outcome recorded with its
timestamps.

Each client is one ``httpx.AsyncClient`` holding at most one connection, so the connection a
request went out on is known: its ``connected`` time is when that TCP connection was
established (httpx's ``trace`` extension reports it), whether it was opened for this request
or reused. A client that finds its connection closed by the server while idle opens a new one
(as every HTTP client does); one whose request got no complete answer records the error.

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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

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
        connected = math.nan

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal connected
            if event == "connection.connect_tcp.complete":
                connected = time.monotonic()

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=self.base, limits=limits, timeout=self.timeout, headers=self.headers
        ) as client:
            index = number
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
                try:
                    response = await client.get(path, extensions={"trace": trace})
                except httpx.HTTPError as exc:
                    # A connect error: no connection was established for this request.
                    refused = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                    on = math.nan if refused else connected
                    self._record(
                        Outcome(
                            number,
                            kind,
                            path,
                            on,
                            started,
                            time.monotonic(),
                            None,
                            type(exc).__name__,
                            None,
                            "",
                            None,
                        )
                    )
                    connected = math.nan  # the next request opens a new connection
                    if refused:
                        await asyncio.sleep(0.01)  # no busy loop while nothing listens
                    continue
                self._record(
                    Outcome(
                        number,
                        kind,
                        path,
                        connected,
                        started,
                        time.monotonic(),
                        response.status_code,
                        None,
                        response.headers.get("x-data-source"),
                        body_digest(response.content),
                        response.headers.get("retry-after"),
                    )
                )
                if response.headers.get("connection", "").lower() == "close":
                    connected = math.nan

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


def in_flight_at(outcomes: Iterable[Outcome], moment: float) -> list[Outcome]:
    """The requests started before ``moment`` and finished after it."""
    return [o for o in outcomes if o.started <= moment <= o.finished]
