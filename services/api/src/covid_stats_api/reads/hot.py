"""The in-process tier: each worker's own copy of the hot documents.

An entry holds what a response needs, ready to send: the body, the gzip and Brotli bodies the
fetcher compressed, the ETag and the header list (surrogate keys included: built once, when
the document is kept). ``fastpath`` serves entries without touching
FastAPI or Redis; the slow path (``documents``) fills entries as it reads documents.

Freshness: a watcher task reads the snapshot pointer and that snapshot's publish time every
``HOT_CACHE_CHECK_SECONDS`` (two cheap reads per worker; chosen over pub/sub or keyspace
events because it needs no extra connection or server configuration and cannot miss a
message across a Redis restart). When either changes (ids count from 1 again in a Redis that
lost its data) it refetches every cached document of the new snapshot; until each
arrives the old one keeps being served (stale-while-revalidate), so a new snapshot reaches
every worker within one check interval plus one refill. At that moment the worker's recent
query answers (``reads.recent``) are dropped too. When Redis is unreachable or empty,
the entries stay: the last good documents keep being served. Entries rendered from
PostgreSQL (Redis down) live only ``HOT_CACHE_DATABASE_TTL_SECONDS``. Memory is bounded by
``HOT_CACHE_MAX_BYTES`` per worker (least recently used entries go first).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import structlog
from redis.exceptions import RedisError

from covid_stats_api.metrics import cache_lookup
from covid_stats_api.reads.recent import RecentAnswers
from covid_stats_contract.documents import (
    JSON_CONTENT_TYPE,
    US_CURRENT,
    Document,
    compress,
    compress_br,
)
from covid_stats_contract.edge import document_keys
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.http import CachePolicy, Representation, data_headers
from covid_stats_runtime.tracing import untraced

log = structlog.get_logger("covid_stats_api.reads.hot")

COVID_STATS = "covid-stats"  # the envelope's key in the tier, derived from US_CURRENT


def envelope(source: str, us_current: bytes) -> bytes:
    """``/covid-stats``'s body, from the ``/v1/us/current.json`` bytes (never decoded)."""
    return b'{"source":"%s","data":%s}\n' % (source.encode(), us_current.rstrip(b"\n"))


@functools.lru_cache(maxsize=16)
def envelope_bodies(source: str, us_current: bytes) -> tuple[bytes, bytes, bytes]:
    """The envelope's identity, gzip and Brotli bodies, compressed once per body and worker
    (the hot tier and FastAPI's route both take them from here: the same bytes)."""
    wrapped = envelope(source, us_current)
    return wrapped, compress(wrapped), compress_br(wrapped)


def envelope_etag(source: str, etag: str) -> str:
    return etag[:-1] + f'-{source}"'  # one tag per body: the source is part of it


@dataclass(slots=True)
class HotEntry(Representation):
    """A representation kept in the tier, with where it came from and until when."""

    source: str
    version: str  # the snapshot id it belongs to; "" when rendered from PostgreSQL
    expires: float  # time.monotonic() deadline

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzip) + len(self.br) + 512


class HotCache:
    def __init__(self, max_bytes: int, policy: CachePolicy, database_ttl: float) -> None:
        self.max_bytes = max_bytes
        self.policy = policy
        self.database_ttl = database_ttl
        self.version: str | None = None  # the snapshot id last seen in Redis
        self.published_at: float | None = None  # its publish time (unix), when known
        self._entries: OrderedDict[str, HotEntry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> HotEntry | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            self._drop(name)
            return None
        self._entries.move_to_end(name)
        return entry

    def lookup(self, name: str) -> HotEntry | None:
        """``get``, counted in the memory tier's lookups: a hit, a miss, or a stale entry (of
        an earlier snapshot: served until its refill arrives, as every kept document is)."""
        entry = self.get(name)
        if entry is None:
            cache_lookup("memory", "miss").inc()
            return None
        stale = self.version is not None and entry.version not in ("", self.version)
        cache_lookup("memory", "stale" if stale else "hit").inc()
        return entry

    def put(
        self,
        name: str,
        body: bytes,
        gzip: bytes,
        br: bytes,
        etag: str,
        content_type: str,
        source: str,
        version: str,
    ) -> None:
        """Keep a document (from Redis: ``version`` is its snapshot id; from PostgreSQL:
        ``version`` is "" and the entry expires soon)."""
        expires = time.monotonic() + (self.database_ttl if not version else float("inf"))
        # The headers, surrogate keys included, are built here once per document and kept.
        common = data_headers(self.policy, source, document_keys(name))

        def keep(name: str, body: bytes, gzip: bytes, br: bytes, etag: str, kind: str) -> None:
            entry = HotEntry.build(
                body, gzip, br, etag, kind, common, source=source, version=version, expires=expires
            )
            self._store(name, entry)

        keep(name, body, gzip, br, etag, content_type)
        if name == US_CURRENT:
            wrapped, wrapped_gzip, wrapped_br = envelope_bodies(source, body)
            tag = envelope_etag(source, etag)
            keep(COVID_STATS, wrapped, wrapped_gzip, wrapped_br, tag, JSON_CONTENT_TYPE)

    def put_document(self, doc: Document) -> None:
        """Keep a document of a Redis snapshot, with its compressed forms."""
        self.put(
            doc.name,
            doc.body,
            doc.gzip,
            doc.br,
            doc.etag,
            doc.content_type,
            "cache",
            doc.snapshot_id,
        )

    def _store(self, name: str, entry: HotEntry) -> None:
        if entry.size > self.max_bytes:
            return
        self._drop(name)
        self._entries[name] = entry
        self._bytes += entry.size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.size

    def documents(self) -> list[str]:
        return [name for name in self._entries if name != COVID_STATS]

    def snapshot_documents(self) -> int:
        """How many entries come from a Redis snapshot (they never expire, unlike the ones
        rendered from PostgreSQL)."""
        return sum(1 for entry in self._entries.values() if entry.version)


class HotWatcher:
    """Keeps a worker's ``HotCache`` in step with the current snapshot."""

    def __init__(
        self,
        hot: HotCache,
        snapshots: SnapshotStore,
        interval: float,
        recent: RecentAnswers | None = None,
    ) -> None:
        self.hot = hot
        self.recent = recent  # the recent query answers: dropped with each new snapshot
        self.snapshots = snapshots
        self.interval = interval
        self._published: str | None = None  # the publish time of the snapshot held
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # The flag ends the loop, not only the cancellation: redis-py can turn a cancellation
        # that lands during a command into one of its errors (around its own timeouts), which
        # the loop suppresses; the worker then waited for the watcher until gunicorn killed it.
        with untraced():  # a poll every 250 ms per worker is not a trace worth keeping
            while not self._stopping:
                with contextlib.suppress(RedisError, OSError):
                    await self.check()
                if not self._stopping:
                    await asyncio.sleep(self.interval)

    async def check(self) -> None:
        current = await self.snapshots.current_id()
        if current is None:
            return
        # Ids count up from 1 in an empty Redis: once Redis has lost its data (a restart, a
        # flush), a new snapshot can come under the id this worker already holds. Its
        # publish time tells the two apart.
        published = await self.snapshots.published_at(current)
        if current == self.hot.version and published == self._published:
            return
        for name in self.hot.documents():
            lookup = await self.snapshots.read(name)
            doc = lookup.document
            if doc is None or lookup.snapshot_id != current:
                continue
            self.hot.put_document(doc)
        # Only now: a refill cut short (Redis gone again) is taken up at the next check.
        if self.recent is not None:
            self.recent.clear()
        self.hot.version = current
        self._published = published
        if published:
            stamp = datetime.fromisoformat(published.replace("Z", "+00:00"))
            self.hot.published_at = stamp.timestamp()
        log.info("hot_cache_refreshed", snapshot_id=current, documents=len(self.hot))
