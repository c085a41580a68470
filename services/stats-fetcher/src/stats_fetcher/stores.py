"""The fetcher's connections: the upstream's HTTP client, Redis, and an asyncpg pool.

- The Redis client and the upstream client are built at once; they connect on first use.
- The PostgreSQL pool is created on first use, so that the fetcher starts while PostgreSQL is
  down and connects once it is up. Its schema is checked first (``schema.check``): one that
  lacks a migration of this release, or has a newer release's migration marked breaking, is
  refused (:class:`SchemaNotReady`, its message says what to do); newer additive migrations
  are accepted and logged once.
- :meth:`Stores.check` says whether Redis and PostgreSQL answer (for ``/readyz``), and why
  the schema was refused when it was (``"schema"``).
- :func:`http_client` builds each of the fetcher's HTTP clients (the upstream's, the purges',
  the webhooks'): its User-Agent, and one TLS context for them all.
"""

from __future__ import annotations

import functools
import ssl

import asyncpg
import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from covid_stats_contract import schema
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.stores import DATABASE_ERRORS
from stats_fetcher import __version__
from stats_fetcher.config import Settings
from stats_fetcher.upstream import UpstreamClient

log = structlog.get_logger("stats_fetcher")
USER_AGENT = f"covid-stats-fetcher/{__version__}"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """What httpx builds for a client by default (the CA bundle, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR``), built once: each build loads the bundle again, 20 to 30 ms of CPU, and
    the fetcher has three clients, in every process it starts (each ``refresh-once``)."""
    return httpx.create_ssl_context()


def http_client(timeout: float, *, follow_redirects: bool, base_url: str = "") -> httpx.AsyncClient:
    """One of the fetcher's HTTP clients."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=follow_redirects,
        verify=tls_context(),
    )


class SchemaNotReady(RuntimeError):
    pass


class Stores:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = RedisKeys(settings.redis_key_prefix)
        timeout = settings.upstream_timeout_seconds
        self.http = http_client(
            timeout, follow_redirects=True, base_url=str(settings.upstream_base_url).rstrip("/")
        )
        self.redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self.snapshots = SnapshotStore(self.redis, self.keys, settings.snapshot_grace_seconds)
        self.upstream = UpstreamClient(
            self.http,
            settings.upstream_format,
            settings.upstream_retries,
            settings.upstream_retry_initial_seconds,
            settings.upstream_retry_max_seconds,
            settings.upstream_max_bytes,
        )
        self._pool: asyncpg.Pool | None = None
        self.schema_problem: str | None = None  # why the schema was last refused

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, created on first use so that the fetcher starts while
        PostgreSQL is down and connects once it is up."""
        if self._pool is None:
            self.schema_problem = None
            pool = await asyncpg.create_pool(
                self.settings.database_url,
                min_size=1,
                max_size=self.settings.db_pool_max_size,
                command_timeout=60,
                timeout=self.settings.upstream_timeout_seconds,  # connect timeout
            )
            try:
                async with pool.acquire() as conn:
                    newer = await schema.check(conn)
            except schema.MigrationError as exc:
                await pool.close()
                self.schema_problem = str(exc)
                raise SchemaNotReady(str(exc)) from exc
            except BaseException:
                await pool.close()
                raise
            if newer:
                log.warning(
                    "schema_newer_additive",
                    versions=[m.version for m in newer],
                    migrations=[m.describe() for m in newer],
                    this_release=schema.LATEST_VERSION,
                )
            self.schema_problem = None
            self._pool = pool
        return self._pool

    async def check(self) -> dict[str, str]:
        """``{"redis": "ok"|"down", "postgres": "ok"|"down"}``, and ``"schema"``: why the
        schema was refused, while it is."""
        checks: dict[str, str] = {}
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except RedisError:
            checks["redis"] = "down"
        try:
            async with (await self.pool()).acquire() as conn:
                await conn.fetchval("SELECT 1")
            checks["postgres"] = "ok"
        except (*DATABASE_ERRORS, SchemaNotReady):
            checks["postgres"] = "down"
        if self._pool is None and self.schema_problem is not None:
            checks["schema"] = self.schema_problem
        return checks

    async def close(self) -> None:
        await self.http.aclose()
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()
