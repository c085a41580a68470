"""The api's Prometheus metrics, exact across gunicorn workers.

prometheus_client's multiprocess mode: every worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (one directory per pod, emptied by ``gunicorn_conf`` when the
master starts; a dead worker's gauges are dropped by its ``child_exit`` hook) and the
master's ``/metrics`` listener on its own port (``covid_stats_api.metrics_server``) adds them
all up, so after K requests the request counter reads K whichever worker answered them.

Route labels are route templates (``/v1/states/{state}/daily.{fmt}``), never raw paths, so
their number is bounded; paths that match no route are ``unmatched``.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import structlog
from opentelemetry import trace
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covid_stats_api import __version__

if TYPE_CHECKING:
    from covid_stats_api.core.stores import Stores
    from covid_stats_api.hot import HotCache

access_log = structlog.get_logger("covid_stats_api.access")

REQUESTS = Counter(
    "covid_stats_api_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "covid_stats_api_request_duration_seconds",
    "Time to answer a request, by route template and method",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_LOOKUPS = Counter(
    "covid_stats_api_cache_lookups",
    "Cache lookups by tier (memory, redis) and result (hit, miss, stale, error)",
    ["tier", "result"],
)
DATA_AGE = Gauge(
    "covid_stats_api_data_age_seconds",
    "Seconds since the snapshot this api serves was published (oldest over workers)",
    multiprocess_mode="livemax",
)
SNAPSHOT_ID = Gauge(
    "covid_stats_api_snapshot_id",
    "Id of the snapshot this api serves (newest over workers)",
    multiprocess_mode="livemax",
)
REDIS_POOL = Gauge(
    "covid_stats_api_redis_pool_connections",
    "Redis pool connections by state (in_use, max), summed over workers",
    ["state"],
    multiprocess_mode="livesum",
)
DB_POOL = Gauge(
    "covid_stats_api_db_pool_connections",
    "PostgreSQL pool connections by state (in_use, max), summed over workers",
    ["state"],
    multiprocess_mode="livesum",
)
BUILD = Gauge(
    "covid_stats_api_build_info",
    "Version of the api (always 1)",
    ["version"],
    multiprocess_mode="max",
)
BUILD.labels(__version__).set(1)


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
            REQUESTS.labels(route, method, str(status)).inc()
            DURATION.labels(route, method).observe(elapsed)
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
        route = getattr(matched, "path", None) or "unmatched"
    return str(route)


def name_span(method: str, route: str) -> None:
    """The server span is named ``METHOD /route/{template}`` (bounded, as the semantic
    conventions ask), known only once routing is done; unmatched paths keep the method."""
    span = trace.get_current_span()
    if route != "unmatched":
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)


async def sample_gauges(stores: Stores, hot: HotCache, interval: float = 1.0) -> None:
    """Keep this worker's gauges current: pools, the snapshot served and its age."""
    while True:
        pool = stores.redis_pool
        REDIS_POOL.labels("in_use").set(len(list(pool._get_in_use_connections())))
        REDIS_POOL.labels("max").set(pool.max_connections)
        if stores.pg_pool is not None:
            size, idle = stores.pg_pool.get_size(), stores.pg_pool.get_idle_size()
            DB_POOL.labels("in_use").set(size - idle)
            DB_POOL.labels("max").set(stores.pg_pool.get_max_size())
        if hot.version is not None:
            SNAPSHOT_ID.set(int(hot.version))
        if hot.published_at is not None:
            DATA_AGE.set(time.time() - hot.published_at)
        await asyncio.sleep(interval)
