"""Every Prometheus metric of the api, defined here and nowhere else.

prometheus_client's multiprocess mode: every worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (one directory per pod, emptied by ``serving.gunicorn_conf``
when the master starts; a dead worker's gauges are dropped by its ``child_exit`` hook) and the
master's listener on its own port (``serving.metrics_server``) adds them all up, so after K
requests the request counter reads K whichever worker answered them.

Who counts what: ``serving.asgi.request_metrics`` the requests and their durations (and
``serving.asgi.direct`` those the server answers itself, and whether it does), the hot tier
(``serving.asgi.fastpath``) and the readers (``reads``) the cache lookups,
``serving.asgi.ratelimit`` its decisions, :func:`sample_gauges` (one task per worker) the
pools and the snapshot served.

Route labels are route templates (``/v1/states/{state}/daily.{fmt}``), never raw paths, so
their number is bounded; paths that match no route are ``unmatched``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from covid_stats_api import __version__

if TYPE_CHECKING:
    from covid_stats_api.core.stores import Stores
    from covid_stats_api.reads.hot import HotCache

REQUESTS = Counter(
    "covid_stats_api_requests",
    "HTTP requests answered, by route template, method (GET, HEAD, OPTIONS, other) and status",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "covid_stats_api_request_duration_seconds",
    "Time to answer a request, by route template and method (GET, HEAD, OPTIONS, other)",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_LOOKUPS = Counter(
    "covid_stats_api_cache_lookups",
    "Cache lookups by tier (memory: hot documents, query-memory: recent query answers, redis)"
    " and result (hit, miss, stale, error)",
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
QUERY_EVICTIONS = Counter(
    "covid_stats_api_query_answers_evicted",
    "Cached query answers deleted from Redis to keep QUERY_CACHE_MAX_BYTES",
)
QUERY_COMPUTATIONS = Counter(
    "covid_stats_api_query_computations",
    "Query answers computed from PostgreSQL (neither memory nor Redis had them)",
)
QUERY_MEMORY_EVICTIONS = Counter(
    "covid_stats_api_query_memory_evicted",
    "Recent query answers dropped from a worker's memory to keep QUERY_MEMORY_CACHE_MAX_BYTES",
)
QUERY_MEMORY_BYTES = Gauge(
    "covid_stats_api_query_memory_bytes",
    "Bytes of recent query answers held in the workers' memory, summed over workers",
    multiprocess_mode="livesum",
)
QUERY_SHORTCUTS = Counter(
    "covid_stats_api_query_shortcuts",
    "Questions answered without a query: empty (they select nothing; never cached), "
    "document (they select a published document), too_large (refused, over "
    "QUERY_ANSWER_MAX_BYTES)",
    ["outcome"],
)
RATE_LIMIT = Counter(
    "covid_stats_api_rate_limit_checks",
    "Rate limit decisions: allowed, limited, or unavailable (Redis could not answer: allowed)",
    ["result"],
)
INVALID_REQUESTS = Counter(
    "covid_stats_api_invalid_requests",
    "Requests the HTTP protocol refused before the app saw them, by status (400 not HTTP/1.1,"
    " 408 too slow, 414/431 head too large); logged sampled (docs/limits.md)",
    ["status"],
)


def count_refusal(status: int) -> None:
    """A request the protocol refused (offered to the server adapter in the lifespan state,
    ``serving.handoff.REFUSALS_KEY``)."""
    INVALID_REQUESTS.labels(status=str(status)).inc()


DIRECT_ANSWERS_ENABLED = Gauge(
    "covid_stats_api_direct_answers_enabled",
    "1 when every worker's HTTP protocol writes hot documents' answers itself (direct "
    "answers), 0 when they take the ASGI path: turned off by a setting (rate limit, tracing, "
    "access log) or because the installed uvicorn lacks a hook the server adapter relies on "
    "(a log line says which)",
    multiprocess_mode="livemin",
)
BUILD = Gauge(
    "covid_stats_api_build_info",
    "Version of the api (always 1)",
    ["version"],
    multiprocess_mode="max",
)
BUILD.labels(__version__).set(1)


# redis-py's internals :func:`sample_gauges` relies on, by the class that has them (no public
# API counts a pool's connections in use): tests/api/test_uvicorn_compat.py checks each
# against the installed redis-py, and that this module uses no other private name.
REDIS_INTERNALS: dict[str, tuple[str, ...]] = {
    "redis.asyncio.BlockingConnectionPool": ("_get_in_use_connections",),  # Stores.redis_pool
}


# The methods the api answers, which label the request metrics as they are: its routes'
# (GET and HEAD) and CORS preflights' (OPTIONS). Any other method httptools parses (some
# thirty: PROPFIND, MKCOL, ...) is counted as ``other``, so unusual methods add no series.
LABELLED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OTHER_METHOD = "other"

# The labelled children the request path counts with, made once each: ``labels()`` checks
# its arguments and takes a lock on every call, a cached child costs a dict lookup. Their
# number is bounded (route templates, the methods httptools parses, statuses).


@functools.cache
def request_series(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and duration histogram of one route, method (``other`` when
    not in ``LABELLED_METHODS``) and status."""
    if method not in LABELLED_METHODS:
        method = OTHER_METHOD
    return REQUESTS.labels(route, method, str(status)), DURATION.labels(route, method)


@functools.cache
def cache_lookup(tier: str, result: str) -> Counter:
    """The cache lookup counter of one tier and result."""
    return CACHE_LOOKUPS.labels(tier, result)


def query_answers_evicted() -> Counter:
    return QUERY_EVICTIONS


def query_computed() -> Counter:
    return QUERY_COMPUTATIONS


def query_memory_evicted() -> Counter:
    return QUERY_MEMORY_EVICTIONS


def query_memory_bytes() -> Gauge:
    return QUERY_MEMORY_BYTES


@functools.cache
def query_shortcut(outcome: str) -> Counter:
    """The counter of questions answered without a query, of one outcome."""
    return QUERY_SHORTCUTS.labels(outcome)


@functools.cache
def rate_limit_check(result: str) -> Counter:
    """The rate limit's decision counter of one result."""
    return RATE_LIMIT.labels(result)


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
