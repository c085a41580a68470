"""The api's connections: a Redis client over a blocking pool and an asyncpg pool.

Both open in the app's lifespan and close at shutdown, sized by settings (per worker).
The Redis pool waits up to ``REDIS_POOL_TIMEOUT_SECONDS`` for a free connection instead of
failing at its limit. The PostgreSQL pool is created in the background and retried until it
succeeds, so a worker starts, and serves from Redis, while PostgreSQL is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypedDict

import asyncpg
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from covid_stats_api.core.config import Settings
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.stores import DATABASE_ERRORS

log = structlog.get_logger("covid_stats_api.stores")

# How long start-up waits for the first PostgreSQL connection before serving without it.
_FIRST_CONNECT_WAIT_SECONDS = 3.0


def postgres_options(settings: Settings) -> dict[str, float]:
    """How every connection of the api's to PostgreSQL is opened: the worker's pool and each
    computation process's own connection (``reads.compute``)."""
    return {
        "command_timeout": settings.db_command_timeout_seconds,
        "timeout": settings.db_command_timeout_seconds,
    }


class RedisOptions(TypedDict):
    socket_timeout: float
    socket_connect_timeout: float
    health_check_interval: int


def redis_options(settings: Settings) -> RedisOptions:
    """How every connection of the api's to Redis is opened (beside ``REDIS_URL``): the
    worker's pool and each computation process's own connection (``reads.compute``)."""
    return {
        "socket_timeout": settings.redis_socket_timeout_seconds,
        "socket_connect_timeout": settings.redis_socket_timeout_seconds,
        "health_check_interval": 30,
    }


class Stores:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis_pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_pool_size,
            timeout=settings.redis_pool_timeout_seconds,
            **redis_options(settings),
        )
        self.redis = Redis(connection_pool=self.redis_pool)
        self.snapshots = SnapshotStore(self.redis, RedisKeys(settings.redis_key_prefix))
        self.pg_pool: asyncpg.Pool | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._connecting = asyncio.create_task(self._connect_postgres())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._connecting), _FIRST_CONNECT_WAIT_SECONDS)

    async def _connect_postgres(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.5, max=10),
            retry=retry_if_exception_type(DATABASE_ERRORS),
            before_sleep=lambda state: log.warning(
                "postgres_connect_failed",
                attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None,
            ),
        ):
            with attempt:
                self.pg_pool = await asyncpg.create_pool(
                    self.settings.database_url,
                    min_size=self.settings.db_pool_min_size,
                    max_size=self.settings.db_pool_max_size,
                    **postgres_options(self.settings),
                )
        log.info("postgres_pool_ready")

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.pg_pool is not None:
            await self.pg_pool.close()
        await self.redis.aclose()
        await self.redis_pool.aclose()
