"""The fetcher's resources and schedule: refresh at start, then every interval, until SIGTERM.

A signal only sets an event that the loop checks between refreshes, so a refresh in flight
finishes (every call in it has a timeout) and the process exits with nothing half-written.
An outage of PostgreSQL, Redis or the upstream fails that refresh, is logged, and the loop
goes on; the next refresh recovers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import asyncpg
import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from covid_stats_contract import schema
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from stats_fetcher import __version__
from stats_fetcher.config import Settings
from stats_fetcher.refresh import Refresher, RefreshResult

log = structlog.get_logger("stats_fetcher.service")

# What a database that is down or restarting raises at connect or query time.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class SchemaNotReady(RuntimeError):
    pass


@dataclass
class Clients:
    http: httpx.AsyncClient
    redis: Redis
    snapshots: SnapshotStore
    settings: Settings
    _pool: asyncpg.Pool | None = None

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

    async def refresh(self) -> RefreshResult | None:
        """One refresh; None when a dependency outage prevented it (logged)."""
        try:
            refresher = Refresher(self.http, await self.pool(), self.snapshots)
            return await refresher.refresh()
        except SchemaNotReady as exc:
            log.error("schema_not_ready", error=str(exc))
        except DATABASE_ERRORS as exc:
            log.error("database_unavailable", error=repr(exc))
        except RedisError as exc:
            log.error("redis_unavailable", error=repr(exc))
        except Exception:  # a bug must not stop the schedule: log it, try again next time
            log.exception("refresh_failed")
        return None


@asynccontextmanager
async def open_clients(settings: Settings) -> AsyncIterator[Clients]:
    """One shared HTTP client, Redis client and (lazy) PostgreSQL pool; closed on exit."""
    timeout = settings.upstream_timeout_seconds
    http = httpx.AsyncClient(
        base_url=str(settings.upstream_base_url).rstrip("/"),
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": f"covid-stats-fetcher/{__version__}"},
        follow_redirects=True,
    )
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    snapshots = SnapshotStore(
        redis, RedisKeys(settings.redis_key_prefix), settings.snapshot_grace_seconds
    )
    clients = Clients(http=http, redis=redis, snapshots=snapshots, settings=settings)
    try:
        yield clients
    finally:
        await http.aclose()
        await redis.aclose()
        if clients._pool is not None:
            await clients._pool.close()


async def run_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "fetcher_started",
        upstream=str(settings.upstream_base_url),
        interval_seconds=settings.fetch_interval_seconds,
    )
    async with open_clients(settings) as clients:
        while not stop.is_set():
            await clients.refresh()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.fetch_interval_seconds)
    log.info("fetcher_stopped")


async def refresh_once(settings: Settings) -> RefreshResult | None:
    async with open_clients(settings) as clients:
        return await clients.refresh()


async def migrate(settings: Settings, wait_seconds: float) -> list[int]:
    """Apply pending migrations, waiting up to ``wait_seconds`` for PostgreSQL to accept."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(wait_seconds),
        wait=wait_exponential_jitter(initial=0.2, max=5),
        retry=retry_if_exception_type(DATABASE_ERRORS),
        reraise=True,
    ):
        with attempt:
            conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return await schema.migrate(conn)
    finally:
        await conn.close()
