"""The request metrics layer: counts and times every request, names its span, writes the
access log. The metrics themselves are defined in ``covid_stats_api.metrics``."""

from __future__ import annotations

import random
import time

import structlog
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covid_stats_api.metrics import request_series

access_log = structlog.get_logger("covid_stats_api.access")


class RequestMetrics:
    """Outermost ASGI layer (inside the tracing middleware when tracing is on): counts and
    times every request, the fast path's included, names the request's span after its route
    template, and writes the access log, of which it keeps a ``access_log_sample_rate``
    share of the lines (every 5xx is kept)."""

    def __init__(
        self, app: ASGIApp, *, access_log_sample_rate: float = 0.0, traced: bool = False
    ) -> None:
        self.app = app
        self.access_log_sample_rate = access_log_sample_rate
        self.traced = traced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.traced:  # routing is done, and the server span still open
                    name_span(scope["method"], route_of(scope))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_of(scope)
            method = scope["method"]
            elapsed = time.perf_counter() - started
            requests, duration = request_series(route, method, status)
            requests.inc()
            duration.observe(elapsed)
            if self.access_log_sample_rate and (
                status >= 500 or random.random() < self.access_log_sample_rate  # noqa: S311
            ):
                client = scope.get("client")
                access_log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    client=client[0] if client else None,
                )


def route_of(scope: Scope) -> str:
    """The route template that answered (the fast path's or FastAPI's), or ``unmatched``."""
    route = scope.get("route_template")
    if route is None:
        matched = scope.get("route")
        route = getattr(matched, "path_format", None) or "unmatched"  # as OpenAPI: no convertor
    return str(route)


def name_span(method: str, route: str) -> None:
    """The server span is named ``METHOD /route/{template}`` (bounded, as the semantic
    conventions ask), known only once routing is done; unmatched paths keep the method."""
    span = trace.get_current_span()
    if route != "unmatched":
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
