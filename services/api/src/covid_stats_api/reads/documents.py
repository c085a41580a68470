"""Reading a document: Redis first, PostgreSQL when Redis misses or is down.

``Served.source`` says where a body came from: ``cache`` (the current Redis snapshot) or
``database`` (rendered from PostgreSQL by the contract's code, byte-identical to what the
fetcher publishes). When neither can answer, ``read`` returns None and the route answers 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog
from redis.exceptions import RedisError

from covid_stats_api.core.stores import Stores
from covid_stats_api.metrics import cache_lookup
from covid_stats_api.reads.hot import HotCache
from covid_stats_contract import records
from covid_stats_contract.documents import JSON_CONTENT_TYPE, etag_for
from covid_stats_runtime.stores import DATABASE_ERRORS

log = structlog.get_logger("covid_stats_api.reads.documents")

Source = Literal["cache", "database"]


@dataclass(frozen=True, slots=True)
class Served:
    body: bytes
    etag: str
    source: Source
    content_type: str = JSON_CONTENT_TYPE
    gzip: bytes = b""  # the body compressed once by the fetcher (empty: not available)
    br: bytes = b""  # the same with Brotli
    # A computed answer its computation stored in Redis itself (``FillTarget``): the answers
    # that store pushed out of the budget; None: not stored by its computation.
    stored: int | None = None


class DocumentReader:
    """Reads documents, and keeps each one it reads in the worker's ``HotCache``."""

    def __init__(self, stores: Stores, hot: HotCache) -> None:
        self.stores = stores
        self.hot = hot

    async def read(self, name: str) -> Served | None:
        try:
            lookup = await self.stores.snapshots.read(name)
        except RedisError as exc:
            cache_lookup("redis", "error").inc()
            log.warning("redis_read_failed", document=name, error=repr(exc))
        else:
            cache_lookup("redis", "miss" if lookup.document is None else "hit").inc()
            if (doc := lookup.document) is not None:
                self.hot.put_document(doc)
                return Served(doc.body, doc.etag, "cache", doc.content_type, doc.gzip, doc.br)
        return await self._read_database(name)

    async def _read_database(self, name: str) -> Served | None:
        pool = self.stores.pg_pool
        if pool is None:
            return None
        try:
            async with pool.acquire() as conn:
                doc = await records.load_document(conn, name)
        except DATABASE_ERRORS as exc:
            log.warning("postgres_read_failed", document=name, error=repr(exc))
            return None
        if doc is None:
            return None
        etag = etag_for(doc.body)
        self.hot.put(name, doc.body, b"", b"", etag, doc.content_type, "database", "")
        return Served(doc.body, etag, "database", doc.content_type)

    async def has_state_data(self) -> bool:
        """Whether any store holds state records: then a state missing from them is unknown
        (404) rather than not loaded yet (503)."""
        try:
            if await self.stores.snapshots.current_id() is not None:
                return True
        except RedisError:
            pass
        pool = self.stores.pg_pool
        if pool is None:
            return False
        try:
            async with pool.acquire() as conn:
                return await records.has_states(conn)
        except DATABASE_ERRORS:
            return False
