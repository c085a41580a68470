"""Answers to parametrized questions: PostgreSQL behind a cache in Redis (cache-aside).

A ``Query`` (built from a request by ``api.params``) is answered through the ``AnswerCache``
(Redis, per snapshot, single-flight). On a miss PostgreSQL answers it through the asyncpg pool: each
statement text is fixed per resource and sort direction, so asyncpg prepares it once per
connection and reuses it. PostgreSQL answers with two values, the number of records and their
texts joined by ``SEPARATOR`` (in order, as bytes): nothing decodes a row per record (10,000
of them took tens of milliseconds of the loop's time). A question of a few records is
fetched and rendered in the worker; a larger one (by the count the data's span gives,
``Canonical.rows``) is fetched and rendered in a computation process (``reads.compute``), over
its own connection: the texts, up to 13.5 MB, never reach the worker's event loop.

A question ``as_of`` an instant reads the records the snapshot current at that instant
served (``covid_stats_contract.history``: the version tables up to that publish's mark)
through the same statement and the same rendering, so the bytes are those served then. Its
cache key names the mark, not the instant: every instant between two publishes shares one
answer.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import structlog

from covid_stats_api.core.stores import Stores
from covid_stats_api.metrics import query_computed
from covid_stats_api.reads.answers import AnswerCache, Uncached
from covid_stats_api.reads.compute import Answered, ComputePool
from covid_stats_api.reads.documents import Served
from covid_stats_contract import history
from covid_stats_contract.documents import (
    CONTENT_TYPES,
    encode_record,
    etag_for,
    render_array,
    render_csv_rows,
    render_object,
)
from covid_stats_contract.models import model_of
from covid_stats_contract.resources import Format, Resource
from covid_stats_contract.snapshots import FillTarget
from covid_stats_runtime.stores import DATABASE_ERRORS

log = structlog.get_logger("covid_stats_api.reads.queries")

# Between two records' texts in what PostgreSQL returns: RFC 7464's record separator, which
# JSON text never holds raw (a control character: escaped inside strings, not whitespace).
SEPARATOR = "\x1e"
# Questions of more records than this are fetched and rendered in a computation process
# (``reads.compute``), off the worker; smaller ones cost less than the trip there. A question
# whose records must be parsed (``parses``) goes there beyond PARSE_INLINE_MAX records: a
# parse is about 20 microseconds a record, and 200 of them, twice for a CSV, held the event
# loop for milliseconds (py-spy on a worker during ``make bench-queries``). A question whose
# count is not known beforehand (``as_of``) goes there too.
RENDER_INLINE_MAX = 200
PARSE_INLINE_MAX = 10
# A worker's heap is never trimmed (``trim_heap`` runs in the computation processes only).
# Trimming it from a thread after large answers held the allocator's lock while it walked the
# heap, and the event loop's allocations waited; and the pages it handed back were faulted in
# again by the next large buffer: growing a 5 MB buffer (a Redis reply) took 0.26 ms in pages
# the heap kept, 5.2 ms in fresh ones (glibc's mmap threshold pinned at 256 KiB, tried and
# dropped). What a worker keeps is its peak: docs/limits.md, "A worker's memory bound".


@dataclass(frozen=True)
class Query:
    """One question to the store: a resource, filters, a sort, a projection, a format."""

    resource: Resource
    fmt: Format
    fields: tuple[str, ...] = ()
    # The sort keys, in order: (field, descending); then the resource's own order.
    sort: tuple[tuple[str, bool], ...] = ()
    date_from: int | None = None
    date_to: int | None = None
    last_days: int | None = None
    states: tuple[str, ...] = ()
    single: bool = False  # a single record (one state's current/info, one date): an object
    as_of: datetime | None = None  # answer as served at this instant (None: now)

    @property
    def asks_document(self) -> bool:
        """Whether the question is a whole published document (no parameter narrows it)."""
        return not (
            self.fields
            or self.sort
            or self.states
            or self.single
            or self.date_from is not None
            or self.date_to is not None
            or self.last_days is not None
        )

    @property
    def key(self) -> str:
        """Canonical text of the question (the cache key's source), ``as_of`` left out:
        ``QueryService`` keys an answer as of an instant by the versions it reads."""
        parts = [
            self.resource.key,
            self.fmt,
            "single" if self.single else "list",
            ",".join(sorted(self.fields)),  # the answer keeps the records' order anyway
            ",".join(("-" if descending else "") + name for name, descending in self.sort),
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

    def __reduce__(self) -> tuple[type[UnknownField], tuple[str, str]]:
        # Raised in a computation process, it crosses back to the worker pickled.
        return UnknownField, (self.parameter, self.name)


class NoRecords(Exception):
    """The question asks for one record and the store has none."""


class StoreUnavailable(Exception):
    """Neither the cache nor PostgreSQL could answer."""


def unavailable(error: str, where: str = "worker") -> StoreUnavailable:
    """The one log line of a failed PostgreSQL read (``where``: the worker's pool or a
    computation process's own connection), and the exception to raise (the api answers 503)."""
    log.warning("postgres_query_failed", error=error, where=where)
    return StoreUnavailable(error)


class TooLarge(Exception):
    """The answer is (or would surely be) over ``QUERY_ANSWER_MAX_BYTES``."""

    def __init__(self, size: int, limit: int, document: str) -> None:
        super().__init__(f"{size} > {limit}")
        self.size = size
        self.limit = limit
        self.document = document  # the published document of the whole resource


class NotPublishedYet(Exception):
    """The question is ``as_of`` an instant before the first publish."""

    def __init__(self, first_published: datetime | None) -> None:
        super().__init__("no publish at or before the instant")
        self.first_published = first_published


@cache
def statement(resource: Resource, directions: tuple[bool, ...], as_of: bool = False) -> str:
    """The SQL of a question to ``resource`` sorted by ``len(directions)`` fields (True:
    descending): one row, the number of records and their texts in order, joined by
    ``SEPARATOR``, as UTF-8 bytes (NULL when there is none). Parameters, in order: the
    version mark (only ``as_of``: the records as of that mark, ``history.as_of_source``),
    first date, last date, states, last N dates, the sort fields (only the ones the
    resource's table has)."""
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
    keys = []
    for descending in directions:
        field = param("sort")
        direction = "DESC" if descending else "ASC"
        keys += [
            f"CASE WHEN json_typeof(record->({field}::text)) = 'number' "
            f"THEN (record->>({field}::text))::numeric END {direction} NULLS LAST",
            f"record->>({field}::text) {direction} NULLS LAST",
        ]
    order = ", ".join([*keys, resource.order_by])
    where = " AND ".join(conditions) or "TRUE"
    texts = f"string_agg(record::text, E'\\x{ord(SEPARATOR):02x}' ORDER BY {order})"
    return (
        f"SELECT count(*)::int, convert_to({texts}, 'UTF8') "  # noqa: S608 - fixed names
        f"FROM {table} WHERE {where}"
    )


def _arguments(query: Query, mark: int | None = None) -> list[Any]:
    columns = query.resource.key_columns
    args: list[Any] = [] if mark is None else [mark]
    if "date" in columns:
        args += [query.date_from, query.date_to]
    if "state" in columns:
        args.append(list(query.states) or None)
    if "date" in columns:
        args.append(query.last_days)
    args += [name for name, _ in query.sort]
    return args


async def fetch(conn: Any, query: Query, mark: int | None = None) -> tuple[int, bytes]:
    """The number of ``query``'s records and their texts, joined (``statement``), over the
    asyncpg connection ``conn`` (as of the version ``mark``; None: now)."""
    directions = tuple(descending for _, descending in query.sort)
    sql = statement(query.resource, directions, mark is not None)
    records, joined = await conn.fetchrow(sql, *_arguments(query, mark))
    return records, joined or b""


def inline(query: Query, rows: int | None) -> bool:
    """Whether a question of ``rows`` records (None: not known) is computed in the worker."""
    if rows is None:
        return False
    return rows <= (PARSE_INLINE_MAX if parses(query) else RENDER_INLINE_MAX)


def split(joined: bytes) -> list[str]:
    """The records' texts PostgreSQL joined (``statement``)."""
    return joined.decode().split(SEPARATOR) if joined else []


def parses(query: Query) -> bool:
    """Whether ``render`` parses the records (a projection, a CSV, or a sort by a field the
    model lacks) rather than joining their texts. Sorted by PostgreSQL already: without a
    projection, a JSON answer needs parsing only to tell whether a sort field the model
    lacks is in any record."""
    modelled = model_of(query.resource).model_fields.keys()
    return bool(
        query.fields or query.fmt != "json" or not all(name in modelled for name, _ in query.sort)
    )


def render(query: Query, texts: Sequence[str]) -> bytes:
    """The answer's body. Without a projection, JSON is the stored text as it is.

    Otherwise the records are parsed one at a time and each is encoded (or written as a CSV
    row) before the next is parsed: a computation never holds its records parsed at once,
    which (a few times their text in Python objects) is what grew a worker's memory for good.
    A CSV reads the records twice (its header, every key, comes first)."""
    modelled = model_of(query.resource).model_fields.keys()
    if texts and not parses(query):
        return render_object(texts[0]) if query.single else render_array(texts)
    wanted = set(query.fields)
    present: dict[str, None] = {}
    encoded: list[str] = []
    for text in texts:
        record: dict[str, Any] = json.loads(text)
        present.update(dict.fromkeys(record))
        if query.fmt == "json":
            if wanted:
                record = {k: v for k, v in record.items() if k in wanted}
            encoded.append(encode_record(record))
    known = present.keys() | modelled
    for name, _ in query.sort:
        if name not in known:
            raise UnknownField("sort", name)
    for name in query.fields:
        if name not in known:
            raise UnknownField("fields", name)
    if query.fmt == "csv":
        # The header of the projected records: their keys in first-seen order, which is the
        # whole records' first-seen order without the keys left out.
        header = [name for name in present if not wanted or name in wanted]
        return render_csv_rows(header, (json.loads(text) for text in texts))
    if query.single:
        return render_object(encoded[0])
    return render_array(encoded)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc only; elsewhere nothing). In a
    computation process, after a computation: it locks the allocator while it runs."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def empty(query: Query) -> Served:
    """The answer to a question that selects no record (a list: ``[]``, or a CSV header)."""
    body = render(query, [])
    return Served(body, etag_for(body), "database", CONTENT_TYPES[query.fmt])


class QueryService:
    """Answers questions; computes at most ``slots`` at once (``QUERY_COMPUTE_SLOTS``: the
    others wait their turn), the large ones in ``compute``'s processes."""

    def __init__(
        self, stores: Stores, answers: AnswerCache, max_bytes: int, compute: ComputePool
    ) -> None:
        self.stores = stores
        self.answers = answers
        self.max_bytes = max_bytes
        self.compute = compute
        self._slots = asyncio.Semaphore(compute.processes)

    async def answer(self, query: Query, rows: int | None = None) -> Served:
        """The answer to ``query``, of ``rows`` records if known (``Canonical.rows``). Raises
        NoRecords, UnknownField, TooLarge or StoreUnavailable (and, ``as_of``,
        NotPublishedYet). An empty answer is served, never cached."""
        if query.as_of is None:
            return await self.answers.get(
                query.key, lambda target: self._compute(query, rows, None, target)
            )
        mark = await self._served_mark(query.resource, query.as_of)
        key = f"{query.key}|as_of:{history.versions_table(query.resource)}<={mark}"
        return await self.answers.get(key, lambda target: self._compute(query, None, mark, target))

    async def _served_mark(self, resource: Resource, instant: datetime) -> int:
        pool = self.stores.pg_pool
        if pool is None:
            raise StoreUnavailable
        try:
            async with pool.acquire() as conn:
                found = await history.served_mark(conn, resource, instant)
        except DATABASE_ERRORS as exc:
            raise unavailable(repr(exc)) from exc
        if found.up_to is None:
            raise NotPublishedYet(found.first_published)
        return found.up_to

    async def _compute(
        self, query: Query, rows: int | None, mark: int | None, target: FillTarget | None
    ) -> Served:
        query_computed().inc()
        async with self._slots:
            return await self._compute_now(query, rows, mark, target)

    async def _compute_now(
        self, query: Query, rows: int | None, mark: int | None, target: FillTarget | None
    ) -> Served:
        """The answer; one computed in a process is stored at ``target`` by that process."""
        # A published document as of an instant (no other parameter) is what this api
        # served then, whatever its size: one answer per publish, not a question to narrow.
        limit = None if mark is not None and query.asks_document else self.max_bytes
        if inline(query, rows):
            records, joined = await self._fetch(query, mark)
            body = render(query, split(joined))
            size, etag, gzip, stored = len(body), etag_for(body), b"", None
        else:
            records, size, body, etag, gzip, stored = await self._compute_elsewhere(
                query, mark, limit, target
            )
        if not records and query.single:
            raise NoRecords
        if limit is not None and size > limit:
            raise TooLarge(size, limit, query.resource.document(query.fmt))
        served = Served(body, etag, "database", CONTENT_TYPES[query.fmt], gzip, stored=stored)
        if not records:
            raise Uncached(served)
        return served

    async def _compute_elsewhere(
        self, query: Query, mark: int | None, limit: int | None, target: FillTarget | None
    ) -> Answered:
        """``compute.answered`` in a computation process: its texts never reach the worker,
        nor do its bytes reach the worker's connection to Redis (the process stores it)."""
        if self.stores.pg_pool is None:  # PostgreSQL not reached yet (or not configured)
            raise StoreUnavailable
        try:
            return await self.compute.answer(query, mark, limit, target)
        except BrokenProcessPool as exc:
            log.warning("query_compute_failed", error=repr(exc))
            raise StoreUnavailable from exc
        except StoreUnavailable as exc:  # the process's own connection failed
            raise unavailable(str(exc), where="compute") from exc

    async def _fetch(self, query: Query, mark: int | None = None) -> tuple[int, bytes]:
        """The number of records and their texts, joined (``fetch``), over the pool."""
        pool = self.stores.pg_pool
        if pool is None:
            raise StoreUnavailable
        try:
            async with pool.acquire() as conn:
                return await fetch(conn, query, mark)
        except DATABASE_ERRORS as exc:
            raise unavailable(repr(exc)) from exc
