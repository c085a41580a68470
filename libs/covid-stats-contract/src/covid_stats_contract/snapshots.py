"""Snapshots in Redis: published atomically by the fetcher, read consistently by the api.

One refresh publishes one snapshot. The fetcher stages every document of the new snapshot
under its own keys (with a provisional TTL, so an abandoned publish cleans itself up), then
one Lua script checks the publisher still holds the leader lease (its fencing value), checks
the documents are all there, makes them permanent, flips the ``current`` pointer and gives
the previous snapshot a grace-period TTL. Readers resolve the pointer and fetch the document
in one script too, so a reader sees the old snapshot or the new one, never a mix.

The scripts build key names from the prefix passed in ARGV, so they assume one Redis
instance (not Redis Cluster); ``keys.RedisKeys`` documents the layout they follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from covid_stats_contract.documents import Compressed, Document, DocumentBody
from covid_stats_contract.keys import RedisKeys

# Seconds the keys of a snapshot being written live if the publish never completes.
PENDING_TTL_SECONDS = 3600

_FLIP = """
-- KEYS[1]: current pointer, KEYS[2]: leader lease. ARGV[1]: new snapshot id,
-- ARGV[2]: snapshot key prefix, ARGV[3]: grace period (s) for the previous snapshot,
-- ARGV[4]: the publisher's lease value ('' to skip the fencing check).
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[4] then
  return redis.error_reply('FENCED the publisher no longer holds the leader lease')
end
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
redis.call('PERSIST', new_base .. ':meta')
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if old and old ~= ARGV[1] then
  local old_base = ARGV[2] .. old
  for _, n in ipairs(redis.call('SMEMBERS', old_base .. ':docs')) do
    redis.call('EXPIRE', old_base .. ':doc:' .. n, ARGV[3])
  end
  redis.call('EXPIRE', old_base .. ':docs', ARGV[3])
  redis.call('EXPIRE', old_base .. ':meta', ARGV[3])
end
return old
"""

_READ = """
-- KEYS[1]: current pointer. ARGV[1]: snapshot key prefix, ARGV[2]: document name.
local id = redis.call('GET', KEYS[1])
if not id then return false end
return {id, redis.call('HGETALL', ARGV[1] .. id .. ':doc:' .. ARGV[2])}
"""

_READ_QUERY = """
-- KEYS[1]: current pointer, KEYS[2]: the answers' LRU index. ARGV[1]: snapshot key prefix,
-- ARGV[2]: query digest. A hit moves the answer to the index's most recently used end.
local id = redis.call('GET', KEYS[1])
if not id then return false end
local key = ARGV[1] .. id .. ':query:' .. ARGV[2]
local found = redis.call('HGETALL', key)
if #found > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'XX', t[1] .. string.format('%06d', t[2]), key)
end
return {id, found}
"""

_CLAIM_FILL = """
-- KEYS[1]: the answer's fill lock, KEYS[2]: the answer's key, KEYS[3]: the LRU index.
-- ARGV[1]: the lock's lifetime (ms). Not taken (another caller holds it): false. Taken: the
-- answer's fields, empty when it is not stored; when it is (a filler stored it between the
-- caller's miss and this claim), the lock goes again and the answer counts as used.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return false end
local found = redis.call('HGETALL', KEYS[2])
if #found > 0 then
  redis.call('DEL', KEYS[1])
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[3], 'XX', t[1] .. string.format('%06d', t[2]), KEYS[2])
end
return found
"""

# Stores an answer within the budget: the answers' keys are indexed by last use (a ZSET) with
# the bytes each is counted for (a HASH) and their sum (a counter); while the sum is over the
# budget the least recently used answers are deleted. Only keys in the index are ever
# deleted, and only answers are indexed: a snapshot's documents cannot be pushed out. An
# answer that expired (TTL) stays counted until the budget pushes it out: the counter
# overstates what Redis holds, never understates it.
_STORE_QUERY = """
-- KEYS[1]: the answer's key, KEYS[2]: LRU index, KEYS[3]: sizes, KEYS[4]: bytes used,
-- KEYS[5]: the answer's fill lock. ARGV: body, etag, content type, gzip ('' none), TTL (s),
-- counted bytes, budget (bytes), '1' to release the fill lock (the caller holds it).
if ARGV[8] == '1' then redis.call('DEL', KEYS[5]) end
local size, budget = tonumber(ARGV[6]), tonumber(ARGV[7])
if size > budget then return -1 end
local old = redis.call('HGET', KEYS[3], KEYS[1])
if old then redis.call('DECRBY', KEYS[4], old) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'etag', ARGV[2], 'content_type', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'gzip', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] .. string.format('%06d', t[2]), KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local used = redis.call('INCRBY', KEYS[4], size)
local evicted = 0
while used > budget do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  local counted = tonumber(redis.call('HGET', KEYS[3], oldest) or '0')
  redis.call('ZREM', KEYS[2], oldest)
  redis.call('HDEL', KEYS[3], oldest)
  redis.call('UNLINK', oldest)
  used = redis.call('DECRBY', KEYS[4], counted)
  evicted = evicted + 1
end
return evicted
"""

# Bytes an answer is counted for besides its fields: its key, its index entries, Redis's
# per-key overhead.
QUERY_OVERHEAD_BYTES = 256

# Documents are written in batches of this many per round trip.
_BATCH = 200


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    body: bytes
    etag: str
    content_type: str
    gzip: bytes = b""  # the body compressed once (empty: too small to gain)


@dataclass(frozen=True, slots=True)
class QueryLookup:
    """The current snapshot id (None: nothing published) and the cached answer, if any."""

    snapshot_id: str | None
    answer: CachedAnswer | None


@dataclass(frozen=True, slots=True)
class FillTarget:
    """Where a computed answer is stored (``SnapshotStore.store_query``), handed to whoever
    computes it: a computation process stores the answer it made itself, so its bytes never
    cross the worker's connection to Redis. ``release_fill``: the answer's fill lock is the
    filler's, and goes with the store."""

    snapshot_id: str
    digest: str
    ttl_seconds: int
    budget_bytes: int
    release_fill: bool


@dataclass(frozen=True, slots=True)
class FillClaim:
    """A claim on an answer's fill lock: ``locked``, this caller computes it (and releases
    the lock, ``store_query``); ``answer``, it was stored meanwhile (the lock is not held)."""

    locked: bool
    answer: CachedAnswer | None = None


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
        self._read_query = redis.register_script(_READ_QUERY)
        self._store_query = redis.register_script(_STORE_QUERY)
        self._claim_fill = redis.register_script(_CLAIM_FILL)
        self._snapshot_prefix = keys.snapshot_base("")

    async def publish(
        self,
        documents: Sequence[DocumentBody],
        meta: Mapping[str, str] | None = None,
        fence: str = "",
    ) -> str:
        """Stage ``documents`` as a new snapshot and activate it. Returns its id."""
        snapshot_id = await self.stage(documents, meta)
        await self.activate(snapshot_id, fence)
        return snapshot_id

    async def stage(
        self, documents: Sequence[DocumentBody], meta: Mapping[str, str] | None = None
    ) -> str:
        """Write a new snapshot's documents (with the provisional TTL); readers do not see
        it until ``activate``. Returns its id."""
        if not documents:
            raise ValueError("a snapshot needs at least one document")
        snapshot_id = str(await self.redis.incr(self.keys.snapshot_seq))
        for start in range(0, len(documents), _BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for doc in documents[start : start + _BATCH]:
                key = self.keys.document(snapshot_id, doc.name)
                rendered = Document.render(doc, snapshot_id)
                pipe.hset(key, mapping=rendered.to_redis_hash())  # type: ignore[arg-type]
                pipe.expire(key, PENDING_TTL_SECONDS)
            await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        docs_key = self.keys.snapshot_docs(snapshot_id)
        pipe.sadd(docs_key, *(doc.name for doc in documents))
        pipe.expire(docs_key, PENDING_TTL_SECONDS)
        meta_key = self.keys.snapshot_meta(snapshot_id)
        fields: dict[str, str] = {"snapshot_id": snapshot_id, **(meta or {})}
        pipe.hset(meta_key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(meta_key, PENDING_TTL_SECONDS)
        await pipe.execute()
        return snapshot_id

    async def activate(self, snapshot_id: str, fence: str = "") -> None:
        """Make a staged snapshot current in one step. Refused (ResponseError) when any of
        its documents is missing, or when ``fence`` is given and is no longer the leader
        lease's value (a FENCED error); the current snapshot then stays as it was."""
        await self._flip(
            keys=[self.keys.current_snapshot, self.keys.leader],
            args=[snapshot_id, self._snapshot_prefix, self.grace_seconds, fence],
        )

    async def current_id(self) -> str | None:
        raw = await self.redis.get(self.keys.current_snapshot)
        return None if raw is None else _text(raw)

    async def published_at(self, snapshot_id: str) -> str | None:
        """When snapshot ``snapshot_id`` was published (ISO 8601), if its meta says."""
        raw = await self.redis.hget(self.keys.snapshot_meta(snapshot_id), "published_at")
        return None if raw is None else _text(raw)

    async def compressed_forms(self, compression: str) -> dict[str, Compressed]:
        """The current snapshot's documents' compressed forms, by name, when it was
        compressed as ``compression`` says (its meta's ``compression``; otherwise, or with no
        current snapshot, none): what a publish takes over for the documents it leaves
        unchanged (``records.load_documents``). Three round trips, about a tenth of the
        snapshot's bytes."""
        current = await self.current_id()
        if current is None:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.snapshot_meta(current), "compression")
        pipe.smembers(self.keys.snapshot_docs(current))
        made_as, members = await pipe.execute()
        if _text(made_as or b"") != compression:
            return {}
        names = sorted(_text(name) for name in members)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.document(current, name), ["content_hash", "gzip", "br"])
        forms: dict[str, Compressed] = {}
        for name, (digest, gzip, br) in zip(names, await pipe.execute(), strict=True):
            if digest is not None:  # the snapshot expired meanwhile: compressed again
                forms[name] = Compressed(_text(digest), gzip or b"", br or b"")
        return forms

    async def meta(self, snapshot_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.snapshot_meta(snapshot_id))
        return {_text(k): _text(v) for k, v in raw.items()}

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

    async def read_query(self, digest: str) -> QueryLookup:
        """The cached answer ``digest`` of the current snapshot, in one round trip."""
        result = await self._read_query(
            keys=[self.keys.current_snapshot, self.keys.query_lru],
            args=[self._snapshot_prefix, digest],
        )
        if not result:
            return QueryLookup(None, None)
        raw_id, flat = result
        if not flat:
            return QueryLookup(_text(raw_id), None)
        return QueryLookup(_text(raw_id), _answer(flat))

    async def claim_fill(self, snapshot_id: str, digest: str, ttl_ms: int) -> FillClaim:
        """Take the fill lock of an answer, and look the answer up again, in one round trip:
        locked for exactly one caller until it is released or ``ttl_ms`` passes (a crashed
        filler cannot block the others for long), unless the answer is stored already."""
        found = await self._claim_fill(
            keys=[
                self.keys.query_fill(snapshot_id, digest),
                self.keys.query(snapshot_id, digest),
                self.keys.query_lru,
            ],
            args=[ttl_ms],
        )
        if found is None:
            return FillClaim(locked=False)
        if found:
            return FillClaim(locked=False, answer=_answer(found))
        return FillClaim(locked=True)

    async def unlock_fill(self, snapshot_id: str, digest: str) -> None:
        await self.redis.delete(self.keys.query_fill(snapshot_id, digest))

    async def store_query(self, target: FillTarget, answer: CachedAnswer) -> int:
        """Cache ``answer`` where ``target`` says, for its TTL, keeping all the answers within
        its budget (least recently used deleted first); with ``target.release_fill``, release
        the answer's fill lock (``claim_fill``) in the same round trip. Returns how many
        answers it pushed out, or -1 when ``answer`` alone is over the budget (not stored)."""
        key = self.keys.query(target.snapshot_id, target.digest)
        size = answer_bytes(key, answer)
        evicted = await self._store_query(
            keys=[
                key,
                self.keys.query_lru,
                self.keys.query_sizes,
                self.keys.query_used,
                self.keys.query_fill(target.snapshot_id, target.digest),
            ],
            args=[
                answer.body,
                answer.etag,
                answer.content_type,
                answer.gzip,
                target.ttl_seconds,
                size,
                target.budget_bytes,
                "1" if target.release_fill else "",
            ],
        )
        return int(evicted)

    async def query_bytes(self) -> int:
        """The bytes the cached answers are counted for (see ``store_query``)."""
        return int(await self.redis.get(self.keys.query_used) or 0)


def _answer(flat: list[bytes]) -> CachedAnswer:
    """An answer from its hash's fields, as HGETALL lists them."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return CachedAnswer(
        fields[b"body"],
        fields[b"etag"].decode(),
        fields[b"content_type"].decode(),
        fields.get(b"gzip", b""),
    )


def answer_bytes(key: str, answer: CachedAnswer) -> int:
    """The bytes an answer is counted for in the budget."""
    fields = len(answer.body) + len(answer.gzip) + len(answer.etag) + len(answer.content_type)
    return fields + len(key) + QUERY_OVERHEAD_BYTES


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
