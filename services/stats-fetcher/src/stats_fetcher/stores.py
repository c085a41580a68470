"""The fetcher's connections: the upstream's HTTP client, Redis, and an asyncpg pool.

- The Redis client and the upstream client are built at once; they connect on first use.
- The PostgreSQL pool is created on first use, so that the fetcher starts while PostgreSQL is
  down and connects once it is up; a pool whose schema is older than this release needs is
  closed and refused (:class:`SchemaNotReady`: run ``stats-fetcher migrate``).
- :meth:`Stores.check` says whether Redis and PostgreSQL answer (for ``/readyz``).
"""

from __future__ import annotations

import asyncpg
import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from covid_stats_contract import schema
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.stores import DATABASE_ERRORS
from stats_fetcher import __version__
from stats_fetcher.config import Settings
from stats_fetcher.upstream import UpstreamClient


class SchemaNotReady(RuntimeError):
    pass


class Stores:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = RedisKeys(settings.redis_key_prefix)
        timeout = settings.upstream_timeout_seconds
        self.http = httpx.AsyncClient(
            base_url=str(settings.upstream_base_url).rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": f"covid-stats-fetcher/{__version__}"},
            follow_redirects=True,
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
        )
        self._pool: asyncpg.Pool | None = None

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, created on first use so that the fetcher starts while
        PostgreSQL is down and connects once it is up."""
        if self._pool is None:
            pool = await asyncpg.create_pool(
                self.settings.database_url,
                min_size=1,
                max_size=self.settings.db_pool_max_size,
                command_timeout=60,
                timeout=self.settings.upstream_timeout_seconds,  # connect timeout
            )
            async with pool.acquire() as conn:
                version = await schema.current_version(conn)
            if version < schema.LATEST_VERSION:
                await pool.close()
                raise SchemaNotReady(
                    f"database schema is at version {version}, this release needs "
                    f"{schema.LATEST_VERSION}: run `stats-fetcher migrate`"
                )
            self._pool = pool
        return self._pool

    async def check(self) -> dict[str, str]:
        """``{"redis": "ok"|"down", "postgres": "ok"|"down"}``."""
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
        return checks

    async def close(self) -> None:
        await self.http.aclose()
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()
