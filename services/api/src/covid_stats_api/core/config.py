"""Settings of the api, read from the environment (docs/configuration.md's table, which
``make config-docs`` generates from this class and the shared ``PortSettings``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator

from covid_stats_runtime.http import CachePolicy
from covid_stats_runtime.settings import PortSettings


class Settings(PortSettings):
    api_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a container's server listens on all interfaces
        description="address gunicorn binds (`make run`: `127.0.0.1`)",
    )
    api_port: int = Field(default=8000, ge=1, le=65535, description="port gunicorn binds")
    api_metrics_port: int = Field(
        default=9000,
        ge=0,
        le=65535,
        description="port of `/metrics`, served by the gunicorn master on `API_HOST`, never on"
        " `API_PORT` (which answers it 404); must differ from `API_PORT`; 0: no metrics listener",
    )
    web_concurrency: int = Field(default=2, ge=1, description="gunicorn worker processes")

    redis_pool_size: int = Field(
        default=32,
        ge=1,
        description="Redis connections per worker (each of its `QUERY_COMPUTE_SLOTS`"
        " computation processes holds one more)",
    )
    redis_pool_timeout_seconds: float = Field(
        default=2.0, gt=0, description="how long a request waits for a free Redis connection"
    )
    redis_socket_timeout_seconds: float = Field(
        default=1.0, gt=0, description="Redis connect and read timeout"
    )

    db_pool_min_size: int = Field(
        default=1, ge=0, description="asyncpg connections kept open per worker"
    )
    db_pool_max_size: int = Field(
        default=8,
        ge=1,
        description="asyncpg pool size, per worker; each of its `QUERY_COMPUTE_SLOTS`"
        " computation processes holds one connection more (the connection budget)",
    )
    db_command_timeout_seconds: float = Field(
        default=5.0, gt=0, description="PostgreSQL connect and query timeout"
    )

    retry_after_seconds: int = Field(default=30, ge=1, description="`Retry-After` of a 503")
    cache_max_age_seconds: int = Field(
        default=60, ge=0, description="`Cache-Control: max-age` of data responses"
    )
    cache_stale_while_revalidate_seconds: int = Field(
        default=30,
        ge=0,
        description="`Cache-Control: stale-while-revalidate` of data responses: how long past"
        " `max-age` a cache may serve an answer while it fetches the next (0: not sent)",
    )
    cache_stale_if_error_seconds: int = Field(
        default=86400,
        ge=0,
        description="`Cache-Control: stale-if-error` of data responses: how long past"
        " `max-age` a cache may serve an answer while the api fails or is down (0: not sent)",
    )
    cache_surrogate_max_age_seconds: int = Field(
        default=86400,
        ge=0,
        description="`Surrogate-Control: max-age` of data responses: how long an edge cache"
        " keeps an answer unless a publish purges its `Surrogate-Key` first (the most an"
        " edge serves old data when purges are lost); see [Edge cache](edge-cache.md)",
    )
    query_cache_ttl_seconds: int = Field(
        default=300,
        ge=1,
        description="how long a query's or derived series' answer stays cached in Redis",
    )
    query_cache_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Redis memory for cached query and derived answers, all workers and pods"
        " together: past it the least recently used go (0: answers are not cached); see"
        " [Query answers](limits.md#query-answers)",
    )
    query_answer_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="largest query answer (uncompressed): a larger one is refused with 422"
        " `too_large` (the published documents are not limited)",
    )
    query_compute_slots: int = Field(
        default=2,
        ge=1,
        le=16,
        description="questions a worker computes at once (the others wait their turn), the"
        " large ones each in a process of its own at a lower CPU priority, which fetches"
        " them over a PostgreSQL connection of its own; bounds what computations hold, see"
        " [Query answers](limits.md#query-answers)",
    )
    query_memory_cache_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="memory for recent query answers, per worker (least recently used out"
        " first; dropped on each publish; 0 turns this tier off)",
    )
    hot_cache_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="memory for hot documents, per worker (0 turns the in-process tier off)",
    )
    hot_cache_check_seconds: float = Field(
        default=0.25, gt=0, description="how often each worker checks for a new snapshot"
    )
    hot_cache_database_ttl_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long a document rendered from PostgreSQL (Redis down) stays in memory",
    )

    gunicorn_timeout_seconds: int = Field(
        default=30, ge=1, description="a worker silent this long is replaced"
    )
    gunicorn_graceful_timeout_seconds: int = Field(
        default=20, ge=1, description="on SIGTERM or reload, time for in-flight requests"
    )
    # Longer than the idle timeout of the load balancers in front (60 s for ALB and
    # ingress-nginx's upstream keep-alive): else one closes a connection the other reuses (502).
    gunicorn_keepalive_seconds: int = Field(
        default=65,
        ge=1,
        description="lifetime of a connection idle after an answer (keep it longer than the"
        " idle timeout of the load balancer in front); a stopping worker drains for at most"
        " this or half `GUNICORN_GRACEFUL_TIMEOUT_SECONDS`, whichever is shorter",
    )
    gunicorn_max_requests: int = Field(
        default=1_000_000,
        ge=0,
        description="recycle a worker after this many requests (0: never)",
    )
    gunicorn_max_requests_jitter: int = Field(
        default=100_000,
        ge=0,
        description="random extra, so workers do not recycle together",
    )
    # gunicorn's own FORWARDED_ALLOW_IPS, with its default.
    forwarded_allow_ips: str = Field(
        default="127.0.0.1,::1",
        description="peers (addresses or networks, comma-separated; `*`: all) whose"
        " `X-Forwarded-For` names the client (see [Rate limit](limits.md#rate-limit))",
    )
    rate_limit_per_minute: int = Field(
        default=0,
        ge=0,
        le=60000,
        description="requests per minute per client over all workers and pods, bursts of as"
        " many; 0 turns the limit off",
    )

    access_log_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of requests written to the access log (0: off, 1: all; when on,"
        " every 5xx is written); needs `LOG_LEVEL` `INFO`",
    )

    @property
    def cache_policy(self) -> CachePolicy:
        """How long browsers and edge caches keep a data answer."""
        return CachePolicy(
            self.cache_max_age_seconds,
            self.cache_stale_while_revalidate_seconds,
            self.cache_stale_if_error_seconds,
            self.cache_surrogate_max_age_seconds,
        )

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.api_metrics_port == self.api_port:
            raise ValueError(
                f"API_METRICS_PORT must differ from API_PORT ({self.api_port}): /metrics is "
                "served on its own port"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
