"""The records' history (migration 0004, ``covid_stats_contract.history``) on a real
PostgreSQL: the versions the triggers keep as ``records.sync_resource`` stores payloads, what
counts as a revision, and which snapshot first served a version."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from covid_stats_contract import history
from covid_stats_contract.documents import encode_record
from covid_stats_contract.records import UpstreamState, sync_resource
from covid_stats_contract.resources import STATES_DAILY, US_DAILY

T0 = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def state_at(step: int) -> UpstreamState:
    return UpstreamState(
        resource=STATES_DAILY.key,
        etag=None,
        last_modified=None,
        content_hash=f"body-{step}",
        record_count=1,
        jurisdictions=1,
        fetched_at=T0 + timedelta(hours=step),
    )


def mi(**fields: Any) -> dict[str, Any]:
    return {"date": 20200301, "state": "MI", **fields}


async def revisions(conn: asyncpg.Connection, **filters: Any) -> list[tuple[Any, ...]]:
    args = [filters.get(k) for k in ("state", "first", "last", "field", "since")] + [None]
    rows = await conn.fetch(history.revisions_statement(STATES_DAILY), *args)
    return [
        (r["state"], r["date"], r["field"], json.loads(r["old"]), json.loads(r["new"]))
        for r in rows
    ]


async def versions(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT state, date, record::text AS record, first_seen FROM states_daily_versions "
        "ORDER BY version_id"
    )
    return [(r["state"], r["date"], r["record"], r["first_seen"]) for r in rows]


def test_versions_and_revisions(database_url: str) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            other = {"date": 20200301, "state": "NY", "positive": 1}
            await sync_resource(conn, STATES_DAILY, [mi(positive=9, hash="a"), other], state_at(0))
            assert len(await versions(conn)) == 2
            # The same records in another body: no version.
            await sync_resource(conn, STATES_DAILY, [mi(positive=9, hash="a"), other], state_at(1))
            assert len(await versions(conn)) == 2
            # Another key order, a field added, two values changed: the changed values are
            # revisions, the order and the added field are not.
            revised = {"state": "MI", "date": 20200301, "hash": "b", "probableCases": 3}
            revised["positive"] = 14
            await sync_resource(conn, STATES_DAILY, [revised, other], state_at(2))
            found = await versions(conn)
            assert len(found) == 3
            assert found[-1][3] == state_at(2).fetched_at  # first seen: the refresh's time
            assert await revisions(conn) == [
                ("MI", 20200301, "hash", "a", "b"),
                ("MI", 20200301, "positive", 9, 14),
            ]
            assert await revisions(conn, field="positive", state="MI") == [
                ("MI", 20200301, "positive", 9, 14)
            ]
            assert await revisions(conn, state="NY") == []
            assert await revisions(conn, first=20200302) == []
            assert await revisions(conn, since=state_at(2).fetched_at) == []
            assert len(await revisions(conn, since=state_at(1).fetched_at)) == 2
            # Removed, then back with another value: a removal and a re-appearance are no
            # revisions (the key had no value between them).
            await sync_resource(conn, STATES_DAILY, [other], state_at(3))
            assert (await versions(conn))[-1][2] is None
            await sync_resource(conn, STATES_DAILY, [mi(positive=15, hash="c"), other], state_at(4))
            assert len(await revisions(conn)) == 2
            # A null that becomes a value (and back) is a revision.
            await sync_resource(
                conn, STATES_DAILY, [mi(positive=None, hash="c"), other], state_at(5)
            )
            assert (await revisions(conn))[0] == ("MI", 20200301, "positive", 15, None)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_publish_names_the_versions_it_first_served(database_url: str) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await sync_resource(conn, STATES_DAILY, [mi(positive=9)], state_at(0))
            marks = await history.version_marks(conn)
            assert await history.stamp_snapshot(conn, "7", marks) == 1
            # Staged, not activated: the rows already name the snapshot.
            await sync_resource(conn, STATES_DAILY, [mi(positive=14)], state_at(1))
            # A publish that never activated is replaced by the next one.
            marks = await history.version_marks(conn)
            assert await history.stamp_snapshot(conn, "8", marks) == 1
            await history.confirm_published(conn, "8", T0)
            rows = await conn.fetch(
                history.revisions_statement(STATES_DAILY), "MI", None, None, None, None, None
            )
            assert [r["snapshot_id"] for r in rows] == [8]
            # Nothing new: a publish adds no row.
            assert await history.stamp_snapshot(conn, "9", marks) == 0
            await sync_resource(conn, STATES_DAILY, [mi(positive=20)], state_at(2))
            assert await history.stamp_snapshot(conn, "10", await history.version_marks(conn)) == 1
            await history.confirm_published(conn, "10", T0 + timedelta(hours=2))
            rows = await conn.fetch(
                history.revisions_statement(STATES_DAILY), "MI", None, None, None, None, None
            )
            assert [(json.loads(r["new"]), r["snapshot_id"]) for r in rows] == [(20, 10), (14, 8)]
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_records_as_of_an_instant(database_url: str) -> None:
    """``served_mark`` finds the newest publish at or before an instant (staged publishes not
    counted), and ``as_of_source`` reads the records it served: a revised value as it was, a
    removed record while it was there."""

    async def scenario() -> None:
        conn = await asyncpg.connect(database_url)
        try:

            async def as_of(instant: datetime) -> list[tuple[str, str]] | None:
                mark = await history.served_mark(conn, STATES_DAILY, instant)
                assert mark.first_published == T0
                if mark.up_to is None:
                    return None
                source = history.as_of_source(STATES_DAILY, "$1")
                rows = await conn.fetch(
                    f"SELECT state, record::text FROM {source} ORDER BY state",  # noqa: S608
                    mark.up_to,
                )
                return [(r["state"], r["record"]) for r in rows]

            other = {"date": 20200301, "state": "NY", "positive": 1}
            await sync_resource(conn, STATES_DAILY, [mi(positive=9), other], state_at(0))
            await history.stamp_snapshot(conn, "1", await history.version_marks(conn))
            await history.confirm_published(conn, "1", T0)
            first = [("MI", encode_record(mi(positive=9))), ("NY", encode_record(other))]
            # NY removed, MI revised, staged but not current yet: not what was served.
            await sync_resource(conn, STATES_DAILY, [mi(positive=14)], state_at(1))
            await history.stamp_snapshot(conn, "2", await history.version_marks(conn))
            hour = timedelta(hours=1)
            assert await as_of(T0 - timedelta(microseconds=1)) is None
            assert await as_of(T0) == first
            assert await as_of(T0 + 3 * hour) == first
            await history.confirm_published(conn, "2", T0 + 2 * hour)
            assert await as_of(T0 + 2 * hour - timedelta(microseconds=1)) == first
            second = [("MI", encode_record(mi(positive=14)))]
            assert await as_of(T0 + 2 * hour) == second
            assert await as_of(T0 + 3 * hour) == second
            # A resource no publish served versions of: no records (mark 0), not "before".
            assert (await history.served_mark(conn, US_DAILY, T0)).up_to == 0
        finally:
            await conn.close()

    asyncio.run(scenario())
