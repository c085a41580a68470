"""What the app's ASGI layers (``serving.asgi``) and the server adapter
(``serving.server.uvicorn_adapter``) share: the bytes of an HTTP/1.1 head as uvicorn writes
them, and the interface of the direct answers the app offers the server.

A leaf: it imports neither half, nor uvicorn, nor any module that defines metrics (the
gunicorn master loads the server adapter, which imports this, before
``PROMETHEUS_MULTIPROC_DIR`` is set).
"""

from __future__ import annotations

import http
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from covid_stats_runtime.http import error_body, error_headers

# The key of the lifespan state (the ASGI lifespan "state" extension) under which the app
# offers the answers the server's protocol writes itself (``serving.asgi.direct``).
DIRECT_ANSWERS_KEY = "covid_stats.direct_answers"

# The header that ends a connection after its answer.
CONNECTION_CLOSE = (b"connection", b"close")


def _status_line(status: int) -> bytes:
    """uvicorn's status line: ``HTTP/1.1``, the code, its phrase (none when unknown)."""
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def http_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A status line and headers as uvicorn writes them (names in lower case), with the
    blank line that ends them: for the answers the server writes itself."""
    lines = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers)
    return _STATUS_LINES[status] + lines + b"\r\n"


def closing_error_answer(
    status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """The bytes of a complete HTTP/1.1 answer in the api's error shape (JSON, CORS,
    Cache-Control) that closes the connection: the protocol's own refusals (400, 408, 414,
    431, 501)."""
    body = error_body(status, code, message)
    extra = error_headers(status, body, (b"access-control-allow-origin", b"*"), CONNECTION_CLOSE)
    return http_head(status, [*default_headers, *extra]) + body


@dataclass(frozen=True, slots=True)
class DirectAnswer:
    """An answer found for a request: its head (status line and headers, as uvicorn writes
    them) and body (empty for HEAD), and what the request metrics label it with."""

    head: bytes
    body: bytes
    route: str
    method: str
    status: int


class DirectAnswerSource(Protocol):
    """What the server adapter asks of the app's direct answers (``serving.asgi.direct``)."""

    enabled: bool  # off while the worker drains, or when the server cannot write them

    def find(
        self, scope: Any, default_headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> DirectAnswer | None:
        """The answer to the request ``scope``, or None: the ASGI path must answer it."""

    def answered(self, answer: DirectAnswer, seconds: float) -> None:
        """Count an answer written, as the request metrics layer does."""

    def served(self, enabled: bool) -> None:
        """Told once per worker at start-up whether the server writes direct answers."""
