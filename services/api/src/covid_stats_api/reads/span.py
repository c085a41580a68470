"""What the data covers (its span): the facts a question is measured against before it is
answered or cached.

For each snapshot: the states the data knows, the dates of the US series and of each state's
series, and each table's record count, mean record size and fields. ``reads.canonical`` uses them to
key an answer by what the question selects (``lastdays=300`` and ``lastdays=5000`` over 224
days are the question without ``lastdays``), to answer a question that selects nothing
without PostgreSQL or Redis, to refuse an unknown state and to refuse an answer over
``QUERY_ANSWER_MAX_BYTES`` before computing it.

The span is read from PostgreSQL (a few aggregate statements, ~20 ms on the archive) once per
snapshot, kept in each worker's memory and in Redis beside the snapshot (``{p}:snapshot:{id}
:span``, with the query answers' TTL), so a worker that never read it can still key a
question while PostgreSQL is down. Without a snapshot (Redis down or empty) a span read from
PostgreSQL is kept a few seconds. Without any span the questions are keyed as asked
(normalized, not clamped): answers stay right, only less shared.
"""

from __future__ import annotations

import asyncio
import json
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from covid_stats_api.core.stores import Stores
from covid_stats_contract.resources import RESOURCES, STATES_DAILY, US_DAILY
from covid_stats_runtime.stores import DATABASE_ERRORS

if TYPE_CHECKING:
    from covid_stats_api.reads.hot import HotCache

log = structlog.get_logger("covid_stats_api.reads.span")

# How long a span read without a snapshot (Redis down or empty) is kept in memory.
_UNVERSIONED_SECONDS = 5.0
US = ""  # the US series' key in ``Span.dates``


def _union(dates: dict[str, tuple[int, ...]], states: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(sorted({d for state in states for d in dates.get(state, ())}))


@dataclass(frozen=True)
class Span:
    states: frozenset[str]  # every state any state table holds
    dates: dict[str, tuple[int, ...]]  # ascending dates: of us/daily (key ""), of each state
    records: dict[str, int]  # resource key -> record count
    record_bytes: dict[str, float]  # resource key -> mean bytes of a record's JSON text
    fields: dict[str, frozenset[str]]  # resource key -> every field any record has

    def series(self, states: tuple[str, ...] | None) -> tuple[int, ...]:
        """The ascending dates of the US series (None) or of the states' series together
        (() : every state's)."""
        if states is None:
            return self.dates.get(US, ())
        if not states:
            return self._every_state
        if len(states) == 1:
            return self.dates.get(states[0], ())
        return _union(self.dates, states)

    @cached_property
    def _every_state(self) -> tuple[int, ...]:
        """The dates of every state's series together: built once per span (a set of some
        20,000 dates on the archive; it was built again for every such question)."""
        return _union(self.dates, tuple(self.states))

    def count(self, states: tuple[str, ...], first: int | None, last: int | None) -> int:
        """How many ``states/daily`` records fall in ``[first, last]`` for ``states``."""
        total = 0
        for state in states or self.states:
            dates = self.dates.get(state, ())
            low = 0 if first is None else bisect_left(dates, first)
            high = len(dates) if last is None else bisect_right(dates, last)
            total += max(0, high - low)
        return total

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "states": sorted(self.states),
                "dates": self.dates,
                "records": self.records,
                "record_bytes": self.record_bytes,
                "fields": {k: sorted(v) for k, v in self.fields.items()},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Span:
        data = json.loads(raw)
        return cls(
            frozenset(data["states"]),
            {k: tuple(v) for k, v in data["dates"].items()},
            {k: int(v) for k, v in data["records"].items()},
            {k: float(v) for k, v in data["record_bytes"].items()},
            {k: frozenset(v) for k, v in data["fields"].items()},
        )


async def _read_span(stores: Stores) -> Span | None:
    pool = stores.pg_pool
    if pool is None:
        return None
    daily = STATES_DAILY.table
    try:
        async with pool.acquire() as conn:
            per_state = await conn.fetch(
                f"SELECT state, array_agg(date ORDER BY date) FROM {daily} GROUP BY state"  # noqa: S608
            )
            us = await conn.fetchval(
                f"SELECT array_agg(date ORDER BY date) FROM {US_DAILY.table}"  # noqa: S608
            )
            states = await conn.fetch(
                " UNION ".join(
                    f"SELECT DISTINCT state FROM {r.table}"  # noqa: S608 - fixed names
                    for r in RESOURCES
                    if r.by_state
                )
            )
            sizes, fields = {}, {}
            for resource in RESOURCES:
                sizes[resource.key] = await conn.fetchrow(
                    f"SELECT count(*), coalesce(avg(length(record::text)), 0) "  # noqa: S608
                    f"FROM {resource.table}"
                )
                fields[resource.key] = await conn.fetchval(
                    "SELECT coalesce(array_agg(DISTINCT k), '{}') FROM "  # noqa: S608
                    f"(SELECT json_object_keys(record) AS k FROM {resource.table}) keys"
                )
    except DATABASE_ERRORS as exc:
        log.warning("postgres_span_failed", error=repr(exc))
        return None
    if not any(row[0] for row in sizes.values()):
        return None  # no data yet: nothing to measure a question against (503s follow)
    dates = {row[0]: tuple(row[1]) for row in per_state}
    dates[US] = tuple(us or ())
    return Span(
        frozenset(row[0] for row in states),
        dates,
        {key: int(row[0]) for key, row in sizes.items()},
        {key: float(row[1]) for key, row in sizes.items()},
        {key: frozenset(names) for key, names in fields.items()},
    )


class SpanService:
    """The span of the current snapshot, per worker; ``get`` returns None when no store can
    tell it. The current snapshot is the one the worker's hot tier holds (``HotCache.version``,
    kept by its watcher: no Redis read per question); until the tier has seen one, the one
    Redis points to."""

    def __init__(self, stores: Stores, ttl_seconds: int, hot: HotCache | None = None) -> None:
        self.stores = stores
        self.ttl_seconds = ttl_seconds
        self.hot = hot
        # (snapshot id or "", its publish time as the hot tier knows it, expiry, span)
        self._held: tuple[str, float | None, float, Span] | None = None
        self._lock = asyncio.Lock()

    async def _current(self) -> tuple[str, float | None]:
        """The current snapshot's id ("" when unknown) and publish time (None: unknown). Ids
        count from 1 again in a Redis that lost its data: the publish time tells apart two
        snapshots of one id, as the hot tier's watcher does."""
        hot = self.hot
        if hot is not None and hot.version is not None:
            return hot.version, hot.published_at
        try:
            return await self.stores.snapshots.current_id() or "", None
        except RedisError:
            return "", None

    def _fresh(self, snapshot_id: str, published: float | None) -> Span | None:
        held = self._held
        if held is not None and held[:2] == (snapshot_id, published) and held[2] > time.monotonic():
            return held[3]
        return None

    async def get(self) -> Span | None:
        snapshot_id, published = await self._current()
        if (span := self._fresh(snapshot_id, published)) is not None:
            return span
        async with self._lock:  # one read per worker at a time
            if (span := self._fresh(snapshot_id, published)) is not None:
                return span
            span = await self._load(snapshot_id)
            if span is not None:
                life = self.ttl_seconds if snapshot_id else _UNVERSIONED_SECONDS
                self._held = (snapshot_id, published, time.monotonic() + life, span)
            return span

    async def _load(self, snapshot_id: str) -> Span | None:
        redis = self.stores.redis
        key = self.stores.snapshots.keys.snapshot_span(snapshot_id) if snapshot_id else None
        if key is not None:
            try:
                raw = await redis.get(key)
            except RedisError:
                raw = None
            if raw is not None:
                return Span.from_json(raw)
        span = await _read_span(self.stores)
        if span is not None and key is not None:
            try:
                await redis.set(key, span.to_json(), ex=self.ttl_seconds)
            except RedisError as exc:
                log.warning("redis_span_write_failed", error=repr(exc))
        return span
