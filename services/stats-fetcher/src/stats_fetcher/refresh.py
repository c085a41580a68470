"""One refresh: fetch every resource, store what is valid, publish a snapshot.

Each resource fails on its own: a rejected payload is logged and leaves that resource's last
good records in PostgreSQL untouched. The snapshot is then rendered from PostgreSQL (the store
of record), so it always holds the last good data of every resource; the same path rebuilds
Redis after a flush or restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx
import structlog
from redis.exceptions import RedisError

from covid_stats_contract import records as store
from covid_stats_contract.schema import Executor
from covid_stats_contract.snapshots import SnapshotStore
from stats_fetcher.upstream import (
    RESOURCES,
    STATES_CURRENT_RESOURCE,
    US_CURRENT_RESOURCE,
    Record,
    Resource,
    UpstreamError,
    fetch_records,
)

log = structlog.get_logger("stats_fetcher.refresh")

Upsert = Callable[[Executor, Sequence[Record], datetime], Awaitable[None]]

_UPSERTS: dict[Resource, Upsert] = {
    US_CURRENT_RESOURCE: store.upsert_us_current,
    STATES_CURRENT_RESOURCE: store.upsert_states_current,
}


@dataclass
class RefreshResult:
    stored: dict[str, int] = field(default_factory=dict)  # resource -> records stored
    failed: dict[str, str] = field(default_factory=dict)  # resource -> reason
    snapshot_id: str | None = None


class Refresher:
    def __init__(
        self,
        http: httpx.AsyncClient,
        pool: asyncpg.Pool,
        snapshots: SnapshotStore,
    ) -> None:
        self.http = http
        self.pool = pool
        self.snapshots = snapshots

    async def refresh(self) -> RefreshResult:
        fetched_at = datetime.now(UTC)
        result = RefreshResult()
        fetched = await asyncio.gather(
            *(fetch_records(self.http, resource) for resource in RESOURCES),
            return_exceptions=True,
        )
        async with self.pool.acquire() as conn:
            for resource, outcome in zip(RESOURCES, fetched, strict=True):
                if isinstance(outcome, UpstreamError):
                    result.failed[resource.document] = outcome.reason
                    log.warning("fetch_rejected", resource=resource.document, reason=outcome.reason)
                    continue
                if isinstance(outcome, BaseException):
                    raise outcome
                async with conn.transaction():
                    await _UPSERTS[resource](conn, outcome, fetched_at)
                result.stored[resource.document] = len(outcome)
            documents = await store.load_documents(conn)
        if documents:
            try:
                result.snapshot_id = await self.snapshots.publish(
                    documents, fetched_at.isoformat().replace("+00:00", "Z")
                )
            except RedisError as exc:
                result.failed["publish"] = repr(exc)
                log.error("publish_failed", error=repr(exc))
        log.info(
            "refresh_done",
            stored=result.stored,
            failed=result.failed,
            snapshot_id=result.snapshot_id,
        )
        return result
