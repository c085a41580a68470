"""What the app's ASGI layers (``serving.asgi``) and the server adapter
(``serving.server.uvicorn_adapter``) share: the bytes of an HTTP/1.1 head as uvicorn writes
them, and the interface of the direct answers (and the refusal counter) the app offers the
server.

A leaf: it imports neither half, nor uvicorn, nor any module that defines metrics (the
gunicorn master loads the server adapter, which imports this, before
``PROMETHEUS_MULTIPROC_DIR`` is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# The bytes of a head and of the protocol's refusals are built in covid_stats_runtime.http (the
# fetcher's port refuses the same way); named here too for the app's layers.
from covid_stats_runtime.http import CONNECTION_CLOSE as CONNECTION_CLOSE
from covid_stats_runtime.http import closing_error_answer as closing_error_answer
from covid_stats_runtime.http import http_head as http_head

# The key of the lifespan state (the ASGI lifespan "state" extension) under which the app
# offers the answers the server's protocol writes itself (``serving.asgi.direct``).
DIRECT_ANSWERS_KEY = "covid_stats.direct_answers"
# The key under which it offers the counter of the protocol's refusals (a callable taking the
# status: ``metrics.count_refusal``): the server adapter imports no module defining metrics.
REFUSALS_KEY = "covid_stats.count_refusal"


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
