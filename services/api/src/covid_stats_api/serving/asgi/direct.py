"""Direct answers: the fast path's answers, found here, written by the server itself.

Under uvicorn every request becomes an asyncio task that runs the ASGI app, which sends its
answer as two messages; uvicorn checks each header against two regular expressions, and
writes the head and the body with two calls. For a hot document none of that is needed: the
answer is in memory, its headers are our own. When the server's protocol has parsed a
request head (``serving.server.uvicorn_adapter``), it asks :meth:`DirectAnswers.find`, which,
when the fast path (``FastPath.find``) has the answer, gives its head (status line and
headers, as uvicorn's ``send`` writes them) and body; the adapter writes them in one call and
completes uvicorn's request cycle, then :meth:`DirectAnswers.answered` counts and times the
request as the request metrics layer does (the same series, the same labels). The bytes are
those the ASGI path sends (a test compares them under gunicorn).

Anything else takes the ASGI path: a request with a body, a pipelined request, a client not
reading its answers (uvicorn's flow control waits for it), a worker draining (its answers
must close the connection), a server that cannot write them (the adapter's start-up guard:
``covid_stats_api_direct_answers_enabled`` is 0), and every request when a layer of the app
must see it (``direct_answers`` decides: a rate limit, tracing, or a sampled access log).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covid_stats_api.metrics import DIRECT_ANSWERS_ENABLED, request_series
from covid_stats_api.serving.asgi.fastpath import FastPath
from covid_stats_api.serving.handoff import CONNECTION_CLOSE, DirectAnswer, http_head

if TYPE_CHECKING:
    from covid_stats_api.core.config import Settings

_BODY_HEADERS = (b"content-length", b"transfer-encoding")


class DirectAnswers:
    """The app's side of direct answers (``serving.handoff.DirectAnswerSource``)."""

    def __init__(self, fast_path: FastPath) -> None:
        self.fast_path = fast_path
        self.enabled = True  # off while the worker drains, or the server cannot write them
        # Serialized heads by header list and keep-alive, for the current Date (uvicorn's
        # default headers change once a second): each value keeps its list alive, so its
        # id is not reused while it is a key.
        self._heads: dict[tuple[int, bool], tuple[Any, bytes]] = {}
        self._date: bytes | None = None

    def find(
        self, scope: Any, default_headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> DirectAnswer | None:
        """The answer to the request ``scope`` (an HTTP scope whose head is complete), with
        the server's ``default_headers`` first and ``connection: close`` unless
        ``keep_alive``; None when the ASGI path must answer it."""
        if not self.enabled:
            return None
        request_headers = scope["headers"]
        for name, _ in request_headers:
            if name in _BODY_HEADERS:
                return None
        found = self.fast_path.find(scope)
        if found is None:
            return None
        route, representation = found
        status, headers, body = representation.choose(request_headers)
        head = self._head(default_headers, status, headers, keep_alive)
        method = scope["method"]
        return DirectAnswer(head, b"" if method == "HEAD" else body, route, method, status)

    def answered(self, answer: DirectAnswer, seconds: float) -> None:
        requests, duration = request_series(answer.route, answer.method, answer.status)
        requests.inc()
        duration.observe(seconds)

    def served(self, enabled: bool) -> None:
        self.enabled = enabled
        DIRECT_ANSWERS_ENABLED.set(1 if enabled else 0)

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
