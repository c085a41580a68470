"""Limits the HTTP server puts on every connection, before the app sees a request.

uvicorn's httptools protocol bounds neither the size of a request's head (the request line
and the headers: httptools buffers a header whole, however long, and uvicorn refuses a URL
over 65,535 bytes only once the whole head has arrived) nor the time a client takes to send
it: uvicorn's keep-alive timer runs only between two requests, every byte received cancels
it, and a new connection has none at all. gunicorn's ``limit_request_*`` settings bound its
own workers' parser, not uvicorn's. So a client could make a worker buffer a header of any
size, or hold connections open forever by trickling bytes (slowloris). This protocol, the
httptools one with three bounds added, closes those holes:

* ``HTTP_MAX_REQUEST_HEAD_BYTES``: a request whose head grows past this is answered 414 (the
  request line alone is too long) or 431 (the headers are), as soon as that many bytes have
  arrived: a worker never holds more than this plus one socket read of a head.
* ``HTTP_REQUEST_TIMEOUT_SECONDS``: a request must arrive whole (head and body) within this
  time of its first byte, else it is answered 408.
* ``HTTP_NEW_CONNECTION_TIMEOUT_SECONDS``: a new connection that sends nothing is closed
  after this long (``GUNICORN_KEEPALIVE_SECONDS``, longer to outlast a load balancer's own
  idle timeout, bounds only a connection idle after an answer).

These answers, and the 400 for bytes that are not HTTP/1.1, have the api's error shape (JSON,
``Access-Control-Allow-Origin: *``) and close the connection "lingering": the answer is sent
with a FIN, then what the client still sends is read and dropped for up to
``_LINGER_SECONDS``, so that it reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, ClassVar

import uvicorn_worker
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from covid_stats_api.core.config import Settings, get_settings
from covid_stats_runtime.http import SERVER_HEADERS, error_body, error_headers

# How long a rejected client's further bytes are read and dropped before the socket closes.
_LINGER_SECONDS = 1.0
# The key of the lifespan state (the ASGI lifespan "state" extension) under which the app
# offers answers the protocol writes itself (``covid_stats_api.serving.direct``). Defined
# here, not there: the master loads this module (the worker class) before
# PROMETHEUS_MULTIPROC_DIR is set, and must not import prometheus_client that early.
DIRECT_ANSWERS_KEY = "covid_stats.direct_answers"


# The header that ends a connection after its answer.
CONNECTION_CLOSE = (b"connection", b"close")


def http_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A status line and headers as uvicorn writes them (names in lower case), with the
    blank line that ends them: for the answers the protocol writes itself."""
    lines = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers)
    return STATUS_LINE[status] + lines + b"\r\n"


def error_response(
    status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete HTTP/1.1 answer in the api's error shape that closes the connection."""
    body = error_body(status, code, message)
    extra = error_headers(body, (b"access-control-allow-origin", b"*"), CONNECTION_CLOSE)
    return http_head(status, [*default_headers, *extra]) + body


class _Rejected(Exception):
    """Raised in a parser callback to stop parsing a request that is refused."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head, a request deadline and an
    idle timer on new connections. Use :func:`protocol_class` to set the bounds.

    Cheap on the common path: a request that arrives whole in one socket read costs a few
    attribute reads and no timer; the deadline is armed only while a request is incomplete.
    Where a request stands is read from uvicorn's own state: ``self.scope`` is the request
    being parsed (a new one per request head begun), ``self.cycle`` the last one whose head
    was complete, and ``cycle.more_body`` whether its body is still to come.
    """

    max_head_bytes: ClassVar[int] = 16384
    request_timeout_seconds: ClassVar[float] = 10.0
    new_connection_timeout_seconds: ClassVar[float] = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the app offers to answer here (``direct``): read once per connection.
        self._direct = self.app_state.get(DIRECT_ANSWERS_KEY)
        # Bytes of the socket reads that began outside a request body since the last
        # complete head: bounds what httptools buffers of a head (it keeps a header whole
        # before calling back), exactly unless a head begins in the middle of a read
        # (pipelining), when that one read (at most 256 KiB) may go uncounted.
        self._read_while_head = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._rejection: tuple[int, str, str] | None = None
        self._refused = False  # answered with an error: the rest of the input is dropped

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that never
        # sends a byte would otherwise live as long as the worker. Its first byte cancels it.
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

    # -- requests ------------------------------------------------------------------------

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """A request whose head is complete: answered here when the app offers a direct
        answer for it (``direct``), else run by the app as uvicorn does."""
        direct = self._direct
        if direct is not None and app is self.app and direct.answer(self, cycle):
            return
        super()._start_asgi_task(cycle, app)

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
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is refused while the previous one's response is being
            # sent: that response finishes, then the connection closes.
            self.cycle.keep_alive = False
            return
        self.transport.write(
            error_response(status, code, message, self.server_state.default_headers)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def protocol_class(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol with ``settings``' bounds."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.http_max_request_head_bytes,
            "request_timeout_seconds": settings.http_request_timeout_seconds,
            "new_connection_timeout_seconds": settings.http_new_connection_timeout_seconds,
        },
    )


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]  # untyped package
    """gunicorn's uvicorn worker (uvloop, httptools) serving through the limited protocol,
    every answer with ``covid_stats_runtime.http.SERVER_HEADERS`` and without uvicorn's
    ``server`` banner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.CONFIG_KWARGS = {
            "loop": "auto",
            "http": protocol_class(get_settings()),
            "headers": list(SERVER_HEADERS),
            "server_header": False,
        }
        super().__init__(*args, **kwargs)
