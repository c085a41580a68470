"""Answers to parametrized questions: PostgreSQL behind a cache in Redis (cache-aside).

A ``Query`` (built from a request by ``api.params``) is answered through the ``AnswerCache``
(Redis, per snapshot, single-flight). On a miss PostgreSQL answers it through the asyncpg pool: each
statement text is fixed per resource and sort direction, so asyncpg prepares it once per
connection and reuses it; a large body is rendered off the event loop.

A question ``as_of`` an instant reads the records the snapshot current at that instant
served (``covid_stats_contract.history``: the version tables up to that publish's mark)
through the same statement and the same rendering, so the bytes are those served then. Its
cache key names the mark, not the instant: every instant between two publishes shares one
answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import structlog

from covid_stats_api.core.stores import Stores
from covid_stats_api.reads.answers import AnswerCache
from covid_stats_api.reads.documents import Served
from covid_stats_contract import history
from covid_stats_contract.documents import (
    CONTENT_TYPES,
    encode_record,
    etag_for,
    render_array,
    render_csv,
    render_object,
)
from covid_stats_contract.models import model_of
from covid_stats_contract.resources import Format, Resource
from covid_stats_runtime.stores import DATABASE_ERRORS

log = structlog.get_logger("covid_stats_api.reads.queries")

# Answers with more records than this are rendered in a thread, off the event loop.
_RENDER_INLINE_MAX = 200


@dataclass(frozen=True)
class Query:
    """One question to the store: a resource, filters, a sort, a projection, a format."""

    resource: Resource
    fmt: Format
    fields: tuple[str, ...] = ()
    sort: str | None = None
    descending: bool = False
    date_from: int | None = None
    date_to: int | None = None
    last_days: int | None = None
    states: tuple[str, ...] = ()
    single: bool = False  # a single record (one state's current/info, one date): an object
    as_of: datetime | None = None  # answer as served at this instant (None: now)

    @property
    def key(self) -> str:
        """Canonical text of the question (the cache key's source), ``as_of`` left out:
        ``QueryService`` keys an answer as of an instant by the versions it reads."""
        parts = [
            self.resource.key,
            self.fmt,
            "single" if self.single else "list",
            ",".join(sorted(self.fields)),  # the answer keeps the records' order anyway
            ("-" if self.descending else "") + (self.sort or ""),
            str(self.date_from or ""),
            str(self.date_to or ""),
            str(self.last_days or ""),
            ",".join(self.states),
        ]
        return "|".join(parts)


class UnknownField(Exception):
    def __init__(self, parameter: str, name: str) -> None:
        super().__init__(f"{parameter}: no such field: {name!r}")
        self.parameter = parameter
        self.name = name


class NoRecords(Exception):
    """The question asks for one record and the store has none."""


class StoreUnavailable(Exception):
    """Neither the cache nor PostgreSQL could answer."""


class NotPublishedYet(Exception):
    """The question is ``as_of`` an instant before the first publish."""

    def __init__(self, first_published: datetime | None) -> None:
        super().__init__("no publish at or before the instant")
        self.first_published = first_published


@cache
def statement(resource: Resource, sort: bool, descending: bool, as_of: bool = False) -> str:
    """The SQL of a question to ``resource``. Parameters, in order: the version mark (only
    ``as_of``: the records as of that mark, ``history.as_of_source``), first date, last
    date, states, last N dates, sort field (only the ones the resource's table has)."""
    columns = resource.key_columns
    params: list[str] = []

    def param(name: str) -> str:
        params.append(name)
        return f"${len(params)}"

    table = history.as_of_source(resource, param("mark")) if as_of else resource.table

    conditions = []
    state_condition = "TRUE"
    if "date" in columns:
        first, last = param("from"), param("to")
        conditions += [
            f"({first}::int IS NULL OR date >= {first})",
            f"({last}::int IS NULL OR date <= {last})",
        ]
    if "state" in columns:
        states = param("states")
        state_condition = f"({states}::text[] IS NULL OR state = ANY({states}))"
        conditions.append(state_condition)
    if "date" in columns:
        n = param("last_days")
        recent = (
            f"SELECT min(d) FROM (SELECT DISTINCT date AS d FROM {table} "  # noqa: S608 - fixed names
            f"WHERE {state_condition} ORDER BY d DESC LIMIT {n}) recent"
        )
        conditions.append(f"({n}::int IS NULL OR date >= ({recent}))")
    order = resource.order_by
    if sort:
        field = param("sort")
        direction = "DESC" if descending else "ASC"
        order = (
            f"CASE WHEN json_typeof(record->({field}::text)) = 'number' "
            f"THEN (record->>({field}::text))::numeric END {direction} NULLS LAST, "
            f"record->>({field}::text) {direction} NULLS LAST, {order}"
        )
    where = " AND ".join(conditions) or "TRUE"
    return f"SELECT record::text FROM {table} WHERE {where} ORDER BY {order}"  # noqa: S608


def _arguments(query: Query, mark: int | None = None) -> list[Any]:
    columns = query.resource.key_columns
    args: list[Any] = [] if mark is None else [mark]
    if "date" in columns:
        args += [query.date_from, query.date_to]
    if "state" in columns:
        args.append(list(query.states) or None)
    if "date" in columns:
        args.append(query.last_days)
    if query.sort:
        args.append(query.sort)
    return args


def render(query: Query, texts: Sequence[str]) -> bytes:
    """The answer's body. Without a projection, JSON is the stored text as it is."""
    if not query.fields and query.fmt == "json" and not query.sort and texts:
        return render_object(texts[0]) if query.single else render_array(texts)
    records: list[dict[str, Any]] = [json.loads(text) for text in texts]
    present: dict[str, None] = {}
    for record in records:
        present.update(dict.fromkeys(record))
    known = present.keys() | model_of(query.resource).model_fields.keys()
    if query.sort and query.sort not in known:
        raise UnknownField("sort", query.sort)
    for name in query.fields:
        if name not in known:
            raise UnknownField("fields", name)
    if query.fields:
        wanted = set(query.fields)
        records = [{k: v for k, v in r.items() if k in wanted} for r in records]
    if query.fmt == "csv":
        return render_csv(records)
    if query.single:
        return render_object(encode_record(records[0]))
    return render_array(encode_record(r) for r in records)


class QueryService:
    def __init__(self, stores: Stores, answers: AnswerCache) -> None:
        self.stores = stores
        self.answers = answers

    async def answer(self, query: Query) -> Served:
        """Raises NoRecords, UnknownField or StoreUnavailable (and, ``as_of``,
        NotPublishedYet)."""
        if query.as_of is None:
            return await self.answers.get(query.key, lambda: self._compute(query))
        mark = await self._served_mark(query.resource, query.as_of)
        key = f"{query.key}|as_of:{history.versions_table(query.resource)}<={mark}"
        return await self.answers.get(key, lambda: self._compute(query, mark))

    async def _served_mark(self, resource: Resource, instant: datetime) -> int:
        pool = self.stores.pg_pool
        if pool is None:
            raise StoreUnavailable
        try:
            async with pool.acquire() as conn:
                found = await history.served_mark(conn, resource, instant)
        except DATABASE_ERRORS as exc:
            log.warning("postgres_query_failed", error=repr(exc))
            raise StoreUnavailable from exc
        if found.up_to is None:
            raise NotPublishedYet(found.first_published)
        return found.up_to

    async def _compute(self, query: Query, mark: int | None = None) -> Served:
        texts = await self._fetch(query, mark)
        if not texts and query.single:
            raise NoRecords
        if len(texts) > _RENDER_INLINE_MAX:
            body = await asyncio.to_thread(render, query, texts)
        else:
            body = render(query, texts)
        return Served(body, etag_for(body), "database", CONTENT_TYPES[query.fmt])

    async def _fetch(self, query: Query, mark: int | None = None) -> list[str]:
        pool = self.stores.pg_pool
        if pool is None:
            raise StoreUnavailable
        sql = statement(query.resource, bool(query.sort), query.descending, mark is not None)
        try:
            async with pool.acquire() as conn:
                rows = await conn.fetch(sql, *_arguments(query, mark))
        except DATABASE_ERRORS as exc:
            log.warning("postgres_query_failed", error=repr(exc))
            raise StoreUnavailable from exc
        return [row[0] for row in rows]
