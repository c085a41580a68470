"""Computed answers cached in Redis per snapshot (cache-aside), one fill at a time.

``AnswerCache.get(key, compute)`` looks the answer up in the current snapshot's query cache
(the snapshot pointer and the answer in one round trip); on a miss it runs ``compute`` and
stores the result under the snapshot's id with a TTL, so a new snapshot never serves an old
answer. Concurrent requests for the same key in one worker share one lookup and one fill
(single-flight): a burst of identical uncached questions costs one PostgreSQL query.
When Redis is down the answer is computed and served without the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError

from covid_stats_api.documents import Served
from covid_stats_contract.snapshots import CachedAnswer, SnapshotStore

log = structlog.get_logger("covid_stats_api.answers")


class AnswerCache:
    def __init__(self, snapshots: SnapshotStore, ttl_seconds: int) -> None:
        self.snapshots = snapshots
        self.ttl_seconds = ttl_seconds
        self._inflight: dict[str, asyncio.Future[Served]] = {}

    async def get(self, key: str, compute: Callable[[], Awaitable[Served]]) -> Served:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        running = self._inflight.get(digest)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            served = await self._fill(digest, compute)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: no warning when nobody else waited
            raise
        else:
            future.set_result(served)
            return served
        finally:
            del self._inflight[digest]

    async def _fill(self, digest: str, compute: Callable[[], Awaitable[Served]]) -> Served:
        snapshot_id = None
        try:
            lookup = await self.snapshots.read_query(digest)
        except RedisError as exc:
            log.warning("redis_answer_read_failed", error=repr(exc))
        else:
            snapshot_id = lookup.snapshot_id
            if (found := lookup.answer) is not None:
                return Served(found.body, found.etag, "cache", found.content_type)
        served = await compute()
        if snapshot_id is not None:
            answer = CachedAnswer(served.body, served.etag, served.content_type)
            with contextlib.suppress(RedisError):
                await self.snapshots.store_query(snapshot_id, digest, answer, self.ttl_seconds)
        return served
