"""Direct answers: the fast path's answers written by the HTTP protocol itself.

Under uvicorn every request becomes an asyncio task that runs the ASGI app, which sends its
answer as two messages; uvicorn checks each header against two regular expressions, and
writes the head and the body with two calls. For a hot document none of that is needed: the
answer is in memory, its headers are our own. When the protocol has parsed a request head,
it asks :meth:`DirectAnswers.answer`, which, when the fast path (``FastPath.find``) has the
answer, writes status line, headers and body in one call, counts and times the request as
the request metrics layer does (the same series, the same labels), and completes uvicorn's
request cycle as its own ``send`` would (keep-alive, ``Connection: close``, the next
pipelined request, the keep-alive timer, the request count for ``GUNICORN_MAX_REQUESTS``).
The bytes are those the ASGI path sends (a test compares them under gunicorn).

Anything else takes the ASGI path: a request with a body, a pipelined request, a client not
reading its answers (uvicorn's flow control waits for it), a worker draining (``worker``:
its answers must close the connection), and every request when a layer of the app must see
it (``direct_answers`` decides: a rate limit, tracing, or a sampled access log).
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from covid_stats_api.metrics import request_series
from covid_stats_api.serving.fastpath import FastPath
from covid_stats_api.serving.http_limits import CONNECTION_CLOSE, http_head

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    from covid_stats_api.core.config import Settings

_BODY_HEADERS = (b"content-length", b"transfer-encoding")


class DirectAnswers:
    def __init__(self, fast_path: FastPath) -> None:
        self.fast_path = fast_path
        self.enabled = True  # off while the worker drains
        # Serialized heads by header list and keep-alive, for the current Date (uvicorn's
        # default headers change once a second): each value keeps its list alive, so its
        # id is not reused while it is a key.
        self._heads: dict[tuple[int, bool], tuple[Any, bytes]] = {}
        self._date: bytes | None = None

    def answer(self, protocol: HttpToolsProtocol, cycle: RequestResponseCycle) -> bool:
        """Answer the request ``cycle`` holds, if this can; False: the ASGI path must."""
        if (
            not self.enabled
            or cycle is not protocol.cycle  # pipelined: uvicorn runs it after the one before
            or protocol.flow.write_paused
            or protocol.access_log  # uvicorn's own access log, when configured
        ):
            return False
        scope = cycle.scope
        for name, _ in scope["headers"]:
            if name in _BODY_HEADERS:
                return False
        found = self.fast_path.find(scope)  # type: ignore[arg-type]
        if found is None:
            return False
        started = perf_counter()
        route, representation = found
        status, headers, body = representation.choose(scope["headers"])
        keep_alive = cycle.keep_alive
        head = self._head(protocol.server_state.default_headers, status, headers, keep_alive)
        method = scope["method"]
        # As uvicorn's cycle ends a request whose answer is complete.
        cycle.more_body = False  # no body: parsing ends with this head
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        transport = protocol.transport
        if method == "HEAD" or not body:
            transport.write(head)
        else:
            transport.writelines((head, body))
        cycle.message_event.set()
        if not keep_alive:
            transport.close()
        requests, duration = request_series(route, method, status)
        requests.inc()
        duration.observe(perf_counter() - started)
        protocol.on_response_complete()
        return True

    def _head(
        self,
        default: list[tuple[bytes, bytes]],
        status: int,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> bytes:
        """Status line and headers, as uvicorn's ``send`` writes them: its default headers
        (Date, ours) first, names in lower case, ``connection: close`` when it closes."""
        date = default[0][1] if default else b""
        if date != self._date:
            self._heads.clear()
            self._date = date
        key = (id(headers), keep_alive)
        cached = self._heads.get(key)
        if cached is not None:
            return cached[1]
        closing = () if keep_alive else (CONNECTION_CLOSE,)
        head = http_head(status, (*default, *headers, *closing))
        self._heads[key] = (headers, head)
        return head


def direct_answers(fast_path: FastPath, settings: Settings, traced: bool) -> DirectAnswers | None:
    """The app's direct answers, or None when a layer around the fast path must see every
    request: the rate limit, tracing, the sampled access log."""
    if settings.rate_limit_per_minute or traced or settings.access_log_sample_rate:
        return None
    return DirectAnswers(fast_path)
