"""Snapshots in Redis: published atomically by the fetcher, read consistently by the api.

One refresh publishes one snapshot. The fetcher writes every document of the new snapshot
under its own keys (with a provisional TTL, so an abandoned publish cleans itself up), then
one Lua script checks they are all there, makes them permanent, flips the ``current`` pointer
and gives the previous snapshot a grace-period TTL. Readers resolve the pointer and fetch the
document in one script too, so a reader sees the old snapshot or the new one, never a mix.

The scripts build key names from the prefix passed in ARGV, so they assume one Redis
instance (not Redis Cluster); ``keys.RedisKeys`` documents the layout they follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from covid_stats_contract.documents import Document
from covid_stats_contract.keys import RedisKeys

# Seconds the keys of a snapshot being written live if the publish never completes.
PENDING_TTL_SECONDS = 3600

_FLIP = """
-- KEYS[1]: current pointer. ARGV[1]: new snapshot id, ARGV[2]: snapshot key prefix,
-- ARGV[3]: grace period (s) for the previous snapshot.
local new_base = ARGV[2] .. ARGV[1]
local names = redis.call('SMEMBERS', new_base .. ':docs')
if #names == 0 then
  return redis.error_reply('snapshot ' .. ARGV[1] .. ' has no documents')
end
for _, n in ipairs(names) do
  if redis.call('EXISTS', new_base .. ':doc:' .. n) == 0 then
    return redis.error_reply('snapshot ' .. ARGV[1] .. ' lost document ' .. n)
  end
end
for _, n in ipairs(names) do redis.call('PERSIST', new_base .. ':doc:' .. n) end
redis.call('PERSIST', new_base .. ':docs')
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if old and old ~= ARGV[1] then
  local old_base = ARGV[2] .. old
  for _, n in ipairs(redis.call('SMEMBERS', old_base .. ':docs')) do
    redis.call('EXPIRE', old_base .. ':doc:' .. n, ARGV[3])
  end
  redis.call('EXPIRE', old_base .. ':docs', ARGV[3])
end
return old
"""

_READ = """
-- KEYS[1]: current pointer. ARGV[1]: snapshot key prefix, ARGV[2]: document name.
local id = redis.call('GET', KEYS[1])
if not id then return false end
return {id, redis.call('HGETALL', ARGV[1] .. id .. ':doc:' .. ARGV[2])}
"""


@dataclass(frozen=True, slots=True)
class DocumentBody:
    """A document as the fetcher renders it, before it belongs to a snapshot."""

    name: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a read found: the current snapshot id (None: nothing published) and the document
    (None: the current snapshot has no document of that name)."""

    snapshot_id: str | None
    document: Document | None


class SnapshotStore:
    """Publishes and reads snapshots under one key prefix."""

    def __init__(self, redis: Redis, keys: RedisKeys, grace_seconds: int = 300) -> None:
        self.redis = redis
        self.keys = keys
        self.grace_seconds = grace_seconds
        self._flip = redis.register_script(_FLIP)
        self._read = redis.register_script(_READ)
        self._snapshot_prefix = keys.snapshot_base("")

    async def publish(self, documents: Sequence[DocumentBody], fetched_at: str) -> str:
        """Write ``documents`` as a new snapshot and make it current. Returns its id."""
        snapshot_id = await self.stage(documents, fetched_at)
        await self.activate(snapshot_id)
        return snapshot_id

    async def stage(self, documents: Sequence[DocumentBody], fetched_at: str) -> str:
        """Write a new snapshot's documents (with the provisional TTL); readers do not see
        it until ``activate``. Returns its id."""
        if not documents:
            raise ValueError("a snapshot needs at least one document")
        snapshot_id = str(await self.redis.incr(self.keys.snapshot_seq))
        pipe = self.redis.pipeline(transaction=False)
        for doc in documents:
            key = self.keys.document(snapshot_id, doc.name)
            rendered = Document.render(
                doc.name, doc.body, snapshot_id=snapshot_id, fetched_at=fetched_at
            )
            pipe.hset(key, mapping=rendered.to_redis_hash())  # type: ignore[arg-type]
            pipe.expire(key, PENDING_TTL_SECONDS)
        docs_key = self.keys.snapshot_docs(snapshot_id)
        pipe.sadd(docs_key, *(doc.name for doc in documents))
        pipe.expire(docs_key, PENDING_TTL_SECONDS)
        await pipe.execute()
        return snapshot_id

    async def activate(self, snapshot_id: str) -> None:
        """Make a staged snapshot current in one step; refused (ResponseError) when any of
        its documents is missing, leaving the current snapshot as it was."""
        await self._flip(
            keys=[self.keys.current_snapshot],
            args=[snapshot_id, self._snapshot_prefix, self.grace_seconds],
        )

    async def current_id(self) -> str | None:
        raw = await self.redis.get(self.keys.current_snapshot)
        return None if raw is None else _text(raw)

    async def read(self, name: str) -> Lookup:
        """The document ``name`` of the current snapshot, in one round trip."""
        result = await self._read(
            keys=[self.keys.current_snapshot], args=[self._snapshot_prefix, name]
        )
        if not result:
            return Lookup(None, None)
        raw_id, flat = result
        snapshot_id = _text(raw_id)
        if not flat:
            return Lookup(snapshot_id, None)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return Lookup(snapshot_id, Document.from_redis_hash(name, fields))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
