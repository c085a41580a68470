"""The one-shot commands: ``stats-fetcher refresh-once`` and ``stats-fetcher migrate``.

- ``refresh-once``: one refresh, as the service runs it, holding the leader lease for its
  duration (refused while a running fetcher holds it).
- ``migrate``: apply the pending PostgreSQL migrations, waiting for PostgreSQL to accept.
  Migrations of a newer release are left alone: reported when additive, refused when one is
  marked breaking (``covid_stats_contract.schema``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from covid_stats_contract import schema
from covid_stats_runtime.stores import DATABASE_ERRORS
from stats_fetcher.config import Settings
from stats_fetcher.leader import LeaderLease
from stats_fetcher.service import FetcherService

log = structlog.get_logger("stats_fetcher.commands")


@contextlib.asynccontextmanager
async def one_shot(settings: Settings) -> AsyncIterator[FetcherService]:
    service = FetcherService(settings)
    try:
        yield service
    finally:
        await service.close()


# How long ``refresh-once`` sends its publish's purge (retries included) before it exits.
PURGE_DRAIN_SECONDS = 10.0


class LeaseHeld(RuntimeError):
    pass


async def _renew(lease: LeaderLease, interval: float) -> None:
    """Renew ``lease`` every ``interval`` seconds (a Redis error: try again next time)."""
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(RedisError):
            await lease.keep()


async def refresh_once(settings: Settings) -> bool:
    """One refresh, holding the leader lease for its duration, renewed as the service renews
    it (refused while a running fetcher holds it). True when it ran and Redis then serves a
    current snapshot."""
    async with one_shot(settings) as service:
        if not await service.lease.keep():
            raise LeaseHeld("another stats-fetcher holds the leader lease")
        renewing = asyncio.create_task(_renew(service.lease, settings.leader_lease_seconds / 3))
        try:
            result = await service.refresh()
            # No sender runs after this command: its publish's purge is sent now, within
            # a bounded time (a dead edge does not hold the command long).
            if service.purger.enabled and not await service.purger.drain(PURGE_DRAIN_SECONDS):
                log.warning(
                    "purge_incomplete", pending=sum(map(len, service.purger.pending.values()))
                )
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await service.lease.release()
        if result is None or result.publish_error is not None:
            return False
        return await service.stores.snapshots.current_id() is not None


async def migrate(settings: Settings, wait_seconds: float) -> schema.Migrated:
    """Apply pending migrations, waiting up to ``wait_seconds`` for PostgreSQL to accept."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(wait_seconds),
        wait=wait_exponential_jitter(multiplier=0.2, max=5),
        retry=retry_if_exception_type(DATABASE_ERRORS),
        reraise=True,
    ):
        with attempt:
            conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return await schema.migrate(conn)
    finally:
        await conn.close()
