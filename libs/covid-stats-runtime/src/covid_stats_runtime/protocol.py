"""The HTTP/1.1 protocol both services' ports serve through: uvicorn's httptools protocol with
a bounded request head, a request deadline and an idle timer on new connections, and the
protocol's refusals counted and logged sampled. The api's workers (through its server
adapter, ``covid_stats_api.serving.server.uvicorn_adapter``, which adds direct answers and
the drain) and the fetcher's port (``stats_fetcher.server``) both build theirs with
:func:`limited_protocol`: one implementation of the limits in docs/limits.md.

Limits on every connection
--------------------------

uvicorn's httptools protocol bounds neither the size of a request's head (the request line
and the headers: httptools buffers a header whole, however long, and uvicorn refuses a URL
over 65,535 bytes only once the whole head has arrived) nor the time a client takes to send
it: uvicorn's keep-alive timer runs only between two requests, every byte received cancels
it, and a new connection has none at all. gunicorn's ``limit_request_*`` settings bound its
own workers' parser, not uvicorn's. So a client could make a server buffer a header of any
size, or hold connections open forever by trickling bytes (slowloris). This protocol, the
httptools one with three bounds added, closes those holes:

* ``HTTP_MAX_REQUEST_HEAD_BYTES``: a request whose head grows past this is answered 414 (the
  request line alone is too long) or 431 (the headers are), as soon as that many bytes have
  arrived: a server never holds more than this plus one socket read of a head.
* ``HTTP_REQUEST_TIMEOUT_SECONDS``: a request must arrive whole (head and body) within this
  time of its first byte, else it is answered 408.
* ``HTTP_NEW_CONNECTION_TIMEOUT_SECONDS``: a new connection that sends nothing is closed
  after this long (the keep-alive timeout bounds only a connection idle after an answer).

And a request whose ``Transfer-Encoding`` is not exactly ``chunked`` (RFC 9112 §6) is
refused before the app sees it: 400 when ``chunked`` is not its last coding, or is given
twice (its body's length cannot be known: httptools would say so only after the head, once
the app had answered), 501 for a coding the server does not implement (``gzip, chunked``).

These answers, and the 400 for bytes that are not HTTP/1.1, have the error shape (JSON,
``Access-Control-Allow-Origin: *``, ``Cache-Control``:
``covid_stats_runtime.http.closing_error_answer``) and
close the connection "lingering": the answer is sent with a FIN, then what the client still
sends is read and dropped for up to ``_LINGER_SECONDS``, so that it reads the answer instead
of a connection reset.

Refusals: counted, logged sampled
---------------------------------

Every refusal (400, 408, 414, 431, 501) is counted (the ``count`` hook given to
:func:`limited_protocol`, or a subclass's ``count_refusal``: each service's
``..._invalid_requests_total{status}``), and logged
by :class:`RefusalLog`: per process, the first ``REFUSALS_LOGGED_PER_INTERVAL`` of each
``REFUSAL_LOG_INTERVAL_SECONDS`` get a line each (``invalid_request``: status, code,
client), the rest only one ``invalid_requests_suppressed`` line with their count when the
interval ends. uvicorn's own line per bad request ("Invalid HTTP request received.") is
dropped: a client sending garbage must not write one log line per request.

What this module relies on of uvicorn's internals is listed in ``UVICORN_INTERNALS``
(tests/api/test_uvicorn_compat.py checks each against the installed uvicorn, and that this
module uses nothing of uvicorn's that is not listed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import structlog
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from covid_stats_runtime.http import closing_error_answer

log = structlog.get_logger("covid_stats_runtime.protocol")

# How long a rejected client's further bytes are read and dropped before the socket closes.
_LINGER_SECONDS = 1.0

# Refusals logged: this many per interval and process, each on its own line; the rest are
# counted and summed up in one line when the interval ends.
REFUSALS_LOGGED_PER_INTERVAL = 10
REFUSAL_LOG_INTERVAL_SECONDS = 60.0

# uvicorn's own warning for input httptools refuses, one line per bad request: dropped
# (RefusalLog logs them sampled).
UVICORN_INVALID_REQUEST_MESSAGE = "Invalid HTTP request received."

# What this module reads, writes, calls or overrides of uvicorn's, by the class that has it
# (the server adapter's list, ``uvicorn_adapter.UVICORN_INTERNALS``, includes these).
UVICORN_INTERNALS: dict[type, tuple[str, ...]] = {
    HttpToolsProtocol: (
        "server_state",
        "loop",
        "transport",
        "flow",
        "logger",  # uvicorn's "uvicorn.error" logger: its line per bad request is filtered
        "client",
        "scope",  # the request being parsed (a new one per request head begun)
        "cycle",  # the last request whose head was complete
        "url",
        "headers",
        "timeout_keep_alive_task",  # written: the idle timer of a new connection
        # methods overridden
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "send_400_response",
        # methods called
        "timeout_keep_alive_handler",
        "_unset_keepalive_if_required",
    ),
    RequestResponseCycle: (
        "scope",
        "keep_alive",  # read; written to close after the response
        "more_body",
        "response_complete",
    ),
    FlowControl: ("read_paused",),
    ServerState: ("default_headers",),
}
# The parameters of the methods overridden that uvicorn calls with arguments.
UVICORN_SIGNATURES: dict[str, tuple[type, str, tuple[str, ...]]] = {
    "refusal": (HttpToolsProtocol, "send_400_response", ("self", "msg")),
}


class _WithoutUvicornsInvalidRequestLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != UVICORN_INVALID_REQUEST_MESSAGE


_UVICORN_LINE_FILTER = _WithoutUvicornsInvalidRequestLine()


class RefusalLog:
    """The protocol's refusals in the log, sampled: the first ``per_interval`` of each
    ``interval`` seconds a line each, then one line with the count of those not logged when
    the interval ends (per process; a timer of the event loop writes it)."""

    def __init__(
        self,
        per_interval: int = REFUSALS_LOGGED_PER_INTERVAL,
        interval: float = REFUSAL_LOG_INTERVAL_SECONDS,
    ) -> None:
        self.per_interval = per_interval
        self.interval = interval
        self._window_end = 0.0
        self._logged = 0
        self._suppressed: dict[int, int] = {}
        self._summary: asyncio.TimerHandle | None = None

    def refused(
        self, loop: asyncio.AbstractEventLoop, status: int, code: str, client: str | None
    ) -> None:
        now = loop.time()
        if now >= self._window_end and self._summary is None:
            self._window_end, self._logged = now + self.interval, 0
        if self._logged < self.per_interval:
            self._logged += 1
            log.warning("invalid_request", status=status, code=code, client=client)
            return
        self._suppressed[status] = self._suppressed.get(status, 0) + 1
        if self._summary is None:
            self._summary = loop.call_at(self._window_end, self._summarize)

    def _summarize(self) -> None:
        suppressed, self._suppressed, self._summary = self._suppressed, {}, None
        log.warning(
            "invalid_requests_suppressed",
            count=sum(suppressed.values()),
            by_status={str(status): n for status, n in sorted(suppressed.items())},
            logged=self._logged,
            interval_seconds=self.interval,
        )


class _Rejected(Exception):
    """Raised in a parser callback to stop parsing a request that is refused."""


def transfer_coding_refusal(headers: list[tuple[bytes, bytes]]) -> tuple[int, str, str] | None:
    """The refusal of a request whose ``Transfer-Encoding`` (its lines together) is not
    exactly ``chunked``, or None: 400 when ``chunked`` is not the last coding or is given
    more than once (the body's length cannot be known), else 501 (a coding not
    implemented)."""
    codings = [
        coding.strip().lower()
        for name, value in headers
        if name == b"transfer-encoding"
        for coding in value.split(b",")
    ]
    if codings == [b"chunked"]:
        return None
    shown = ", ".join(c.decode("latin-1") for c in codings)[:100]
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return (
            400,
            "bad_transfer_encoding",
            f"Transfer-Encoding '{shown}' does not end with one 'chunked': the body's length "
            "cannot be known.",
        )
    return (
        501,
        "transfer_coding_not_implemented",
        f"Transfer-Encoding '{shown}': only 'chunked' is implemented.",
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head, a request deadline and an
    idle timer on new connections. Use :func:`limited_protocol` to set the bounds.

    Cheap on the common path: a request that arrives whole in one socket read costs a few
    attribute reads and no timer; the deadline is armed only while a request is incomplete.
    Where a request stands is read from uvicorn's own state: ``self.scope`` is the request
    being parsed (a new one per request head begun), ``self.cycle`` the last one whose head
    was complete, and ``cycle.more_body`` whether its body is still to come.
    """

    max_head_bytes: ClassVar[int] = 16384
    request_timeout_seconds: ClassVar[float] = 10.0
    new_connection_timeout_seconds: ClassVar[float] = 5.0
    refusal_log: ClassVar[RefusalLog] = RefusalLog()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes of the socket reads that began outside a request body since the last
        # complete head: bounds what httptools buffers of a head (it keeps a header whole
        # before calling back), exactly unless a head begins in the middle of a read
        # (pipelining), when that one read (at most 256 KiB) may go uncounted.
        self._read_while_head = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._rejection: tuple[int, str, str] | None = None
        self._refused = False  # answered with an error: the rest of the input is dropped
        if _UVICORN_LINE_FILTER not in self.logger.filters:
            self.logger.addFilter(_UVICORN_LINE_FILTER)

    def count_refusal(self, status: int) -> None:
        """Counts a refusal by its status (the service's metric: ``limited_protocol``)."""

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that never
        # sends a byte would otherwise live as long as the server. Its first byte cancels it.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.new_connection_timeout_seconds, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: drop what the client still sends
        scope, cycle = self.scope, self.cycle
        in_body = cycle is not None and cycle.scope is scope and cycle.more_body
        if not in_body:
            self._read_while_head += len(data)
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.scope is self.scope:
            pending = self.cycle.more_body  # the body is still to come
        elif self.scope is not None:  # a head begun and not complete
            if self._read_while_head > self.max_head_bytes:
                self._reject(*self._too_large(self._read_while_head))
                return
            pending = True
        else:
            pending = False
        progressed = self.scope is not scope or self.cycle is not cycle
        if not (pending or progressed or in_body):
            pending = True  # bytes outside any request (blank lines): they count too
        if pending:
            if progressed or self._deadline is None:  # from this request's first read
                self._cancel_deadline()
                self._deadline = self.loop.call_later(
                    self.request_timeout_seconds, self._request_timed_out
                )
        elif self._deadline is not None:
            self._cancel_deadline()

    # -- parser callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        read, self._read_while_head = self._read_while_head, 0
        # The reads counted are an upper bound of the head's size, except for a head that
        # began in the middle of a read (read == 0, or the first of several reads): then,
        # and when the bound is exceeded, measure the head itself.
        if (read == 0 or read > self.max_head_bytes) and (
            size := self._head_size()
        ) > self.max_head_bytes:
            self._rejection = self._too_large(size)
            raise _Rejected
        for name, _ in self.headers:
            if name == b"transfer-encoding":
                self._rejection = transfer_coding_refusal(self.headers)
                if self._rejection is not None:
                    raise _Rejected
                break
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # -- answers -------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this when httptools refuses the input, or a callback raised."""
        rejection = self._rejection or (400, "bad_request", "The request is not valid HTTP/1.1.")
        self._reject(*rejection)

    def _too_large(self, size: int) -> tuple[int, str, str]:
        """414 when the request line makes most of the ``size`` bytes of head, else 431."""
        limit = f"the limit of {self.max_head_bytes} bytes"
        if not self.headers or 2 * len(self.url) >= size:
            return 414, "uri_too_long", f"The request line is over {limit}."
        return 431, "headers_too_large", f"The request's headers are over {limit}."

    def _request_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._refused:
            return
        if self.flow is not None and self.flow.read_paused:
            # uvicorn stopped reading (pipelined requests wait for a response): the server
            # is the slow one, not the client.
            self._deadline = self.loop.call_later(
                self.request_timeout_seconds, self._request_timed_out
            )
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A response is on its way while its request's body still trickles in: the
            # connection closes once it is sent.
            cycle.keep_alive = False
        elif cycle is None or cycle.scope is not self.scope:  # a head never completed
            self._reject(
                408,
                "request_timeout",
                f"The request did not arrive within {self.request_timeout_seconds:g} seconds.",
            )
        else:
            self.transport.close()

    def _reject(self, status: int, code: str, message: str) -> None:
        self._refused = True
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        self.count_refusal(status)
        peer = self.client[0] if self.client else None
        self.refusal_log.refused(self.loop, status, code, peer)
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is refused while the previous one's response is being
            # sent: that response finishes, then the connection closes.
            self.cycle.keep_alive = False
            return
        self.transport.write(
            closing_error_answer(status, code, message, self.server_state.default_headers)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def limited_protocol(
    max_head_bytes: int,
    request_timeout_seconds: float,
    new_connection_timeout_seconds: float,
    count: Callable[[int], None] | None = None,
    base: type[LimitedHttpToolsProtocol] = LimitedHttpToolsProtocol,
    **attributes: Any,
) -> type[LimitedHttpToolsProtocol]:
    """``base`` (the limited protocol or a subclass) with these bounds, counting each refusal
    by its status with ``count`` (None: ``base.count_refusal``); ``attributes``: more class
    attributes of the subclass's."""
    if count is not None:
        attributes["count_refusal"] = lambda self, status: count(status)
    return type(
        "LimitedHttpToolsProtocol",
        (base,),
        {
            "max_head_bytes": max_head_bytes,
            "request_timeout_seconds": request_timeout_seconds,
            "new_connection_timeout_seconds": new_connection_timeout_seconds,
            **attributes,
        },
    )
