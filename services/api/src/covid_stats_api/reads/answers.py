"""Computed answers cached in Redis per snapshot (cache-aside), one fill at a time.

``AnswerCache.get(key, compute)`` looks the answer up in the current snapshot's query cache
(the snapshot pointer and the answer in one round trip); on a miss it runs ``compute`` and
stores the result under the snapshot's id with a TTL, so a new snapshot never serves an old
answer. Concurrent requests for the same key in one worker share one lookup and one fill
(single-flight), and across workers only the one holding the answer's fill lock in Redis
computes it while the others wait for it to appear: a burst of identical uncached questions
costs one PostgreSQL query. When Redis is down the answer is computed and served without
the cache.

Every answer is compressed once, when it is computed (in a thread when large), and its gzip
body is cached with it: clients that accept gzip get it, as for documents.

The answers share one byte budget (``QUERY_CACHE_MAX_BYTES``, kept by
``SnapshotStore.store_query``: least recently used answers out first), and a computation
that raises ``Uncached`` (an empty answer) is served without being stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog
from redis.exceptions import RedisError

from covid_stats_api.metrics import cache_lookup, query_answers_evicted
from covid_stats_api.reads.documents import Served
from covid_stats_contract.documents import compress
from covid_stats_contract.snapshots import CachedAnswer, FillClaim, FillTarget, SnapshotStore

log = structlog.get_logger("covid_stats_api.reads.answers")

# The fill lock's lifetime, and how long other workers wait for the filler's answer before
# computing it themselves (a filler that died or is stuck does not block them for long).
_FILL_LOCK_MS = 10_000
_FILL_WAIT_SECONDS = 10.0
# Answers larger than this are compressed in a thread, off the event loop.
_COMPRESS_INLINE_MAX = 64 * 1024


# Computes an answer; given a ``FillTarget``, it may store the answer there itself (a
# computation process does: ``Served.stored``), else the cache stores it.
Compute = Callable[[FillTarget | None], Awaitable[Served]]


async def _compressed(compute: Compute, target: FillTarget | None = None) -> Served:
    """``compute``'s answer with its gzip body."""
    served = await compute(target)
    if served.gzip:
        return served
    if len(served.body) > _COMPRESS_INLINE_MAX:
        return replace(served, gzip=await asyncio.to_thread(compress, served.body))
    return replace(served, gzip=compress(served.body))


class Uncached(Exception):
    """Raised by a computation whose answer must be served but not cached."""

    def __init__(self, served: Served) -> None:
        super().__init__("uncached answer")
        self.served = served


def _served(found: CachedAnswer) -> Served:
    """An answer read back from Redis."""
    return Served(found.body, found.etag, "cache", found.content_type, found.gzip)


class AnswerCache:
    def __init__(self, snapshots: SnapshotStore, ttl_seconds: int, budget_bytes: int) -> None:
        self.snapshots = snapshots
        self.ttl_seconds = ttl_seconds
        self.budget_bytes = budget_bytes
        self._inflight: dict[str, asyncio.Future[Served]] = {}

    async def get(self, key: str, compute: Compute) -> Served:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        running = self._inflight.get(digest)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            served = await self._fill(digest, compute)
        except Uncached as uncached:
            future.set_result(uncached.served)
            return uncached.served
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: no warning when nobody else waited
            raise
        else:
            future.set_result(served)
            return served
        finally:
            del self._inflight[digest]

    async def _fill(self, digest: str, compute: Compute) -> Served:
        snapshot_id = None
        try:
            lookup = await self.snapshots.read_query(digest)
        except RedisError as exc:
            cache_lookup("redis", "error").inc()
            log.warning("redis_answer_read_failed", error=repr(exc))
        else:
            snapshot_id = lookup.snapshot_id
            cache_lookup("redis", "miss" if lookup.answer is None else "hit").inc()
            if (found := lookup.answer) is not None:
                return _served(found)
        if snapshot_id is None or self.budget_bytes == 0:
            return await _compressed(compute)
        # The fill lock and a second look (a filler may have stored the answer between this
        # worker's miss and its claim) in one round trip; the lock goes with the answer's
        # store in one more: a miss costs three round trips to Redis.
        claim = FillClaim(locked=True)  # Redis failed: compute it, as when Redis is down
        with contextlib.suppress(RedisError):
            claim = await self.snapshots.claim_fill(snapshot_id, digest, _FILL_LOCK_MS)
        if claim.answer is not None:
            return _served(claim.answer)
        if not claim.locked:
            # Another worker is computing it: wait for its answer, within a deadline.
            waited = await self._wait_for_fill(digest, snapshot_id)
            if waited is not None:
                return waited
        held = claim.locked  # until the answer's store releases it
        target = FillTarget(snapshot_id, digest, self.ttl_seconds, self.budget_bytes, held)
        try:
            served = await _compressed(compute, target)
            evicted = served.stored
            if evicted is not None:  # its computation stored it (and released the lock)
                held = False
            else:
                answer = CachedAnswer(served.body, served.etag, served.content_type, served.gzip)
                try:
                    evicted = await self.snapshots.store_query(target, answer)
                except RedisError as exc:
                    log.warning("redis_answer_write_failed", error=repr(exc))
                else:
                    held = False
            if evicted is not None and evicted > 0:
                query_answers_evicted().inc(evicted)
            return served
        finally:
            if held:
                with contextlib.suppress(RedisError):
                    await self.snapshots.unlock_fill(snapshot_id, digest)

    async def _wait_for_fill(self, digest: str, snapshot_id: str) -> Served | None:
        deadline = asyncio.get_running_loop().time() + _FILL_WAIT_SECONDS
        delay = 0.005
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            try:
                lookup = await self.snapshots.read_query(digest)
            except RedisError:
                return None
            if lookup.snapshot_id != snapshot_id:
                return None
            if (found := lookup.answer) is not None:
                return _served(found)
        return None
