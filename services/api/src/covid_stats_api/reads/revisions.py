"""Revisions: one row per changed value of a daily series, from the records' history
(``covid_stats_contract.history``), newest first; cached in Redis per snapshot like the other
computed answers (``reads.answers``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from covid_stats_api.core.stores import Stores
from covid_stats_api.reads.answers import AnswerCache
from covid_stats_api.reads.documents import Served
from covid_stats_api.reads.queries import StoreUnavailable
from covid_stats_contract.documents import CONTENT_TYPES, encode_record, etag_for, render_array
from covid_stats_contract.history import revisions_statement
from covid_stats_contract.resources import Format, Resource
from covid_stats_runtime.stores import DATABASE_ERRORS

log = structlog.get_logger("covid_stats_api.reads.revisions")

# The keys of a revision, in order (the CSV's header); ``state`` only for states' records.
COLUMNS = ("date", "state", "field", "old", "new", "firstSeen", "snapshotId")
_RENDER_INLINE_MAX = 500


@dataclass(frozen=True)
class RevisionsQuery:
    """Which revisions: of one resource's records (one state's, or the US's), the record
    dates ``date_from``..``date_to``, one ``field``, first seen after ``since``."""

    resource: Resource
    fmt: Format
    state: str | None = None
    date_from: int | None = None
    date_to: int | None = None
    field: str | None = None
    since: datetime | None = None

    @property
    def key(self) -> str:
        """Canonical text of the question (the cache key's source)."""
        since = self.since.isoformat() if self.since is not None else ""
        parts = ["revisions", self.resource.key, self.fmt, self.state or ""]
        parts += [str(self.date_from or ""), str(self.date_to or ""), self.field or "", since]
        return "|".join(parts)


def _instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def render(query: RevisionsQuery, rows: Sequence[Any]) -> bytes:
    """The answer's body: a JSON array of revisions, or CSV with a fixed header."""
    columns = COLUMNS if query.resource.by_state else tuple(c for c in COLUMNS if c != "state")
    revisions = []
    for row in rows:
        values = {
            "date": row["date"],
            "state": row["state"],
            "field": row["field"],
            "old": json.loads(row["old"]),
            "new": json.loads(row["new"]),
            "firstSeen": _instant(row["first_seen"]),
            "snapshotId": None if row["snapshot_id"] is None else str(row["snapshot_id"]),
        }
        revisions.append({column: values[column] for column in columns})
    if query.fmt == "json":
        return render_array(encode_record(revision) for revision in revisions)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(revision[c]) for c in columns] for revision in revisions)
    return out.getvalue().encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    return value


class RevisionsService:
    def __init__(self, stores: Stores, answers: AnswerCache) -> None:
        self.stores = stores
        self.answers = answers

    async def answer(self, query: RevisionsQuery) -> Served:
        """Raises StoreUnavailable when PostgreSQL cannot answer."""
        return await self.answers.get(query.key, lambda _target: self._compute(query))

    async def _compute(self, query: RevisionsQuery) -> Served:
        pool = self.stores.pg_pool
        if pool is None:
            raise StoreUnavailable
        arguments = (query.state, query.date_from, query.date_to, query.field, query.since, None)
        try:
            async with pool.acquire() as conn:
                rows = await conn.fetch(revisions_statement(query.resource), *arguments)
        except DATABASE_ERRORS as exc:
            log.warning("postgres_revisions_failed", error=repr(exc))
            raise StoreUnavailable from exc
        if len(rows) > _RENDER_INLINE_MAX:
            body = await asyncio.to_thread(render, query, rows)
        else:
            body = render(query, rows)
        return Served(body, etag_for(body), "database", CONTENT_TYPES[query.fmt])
