"""What a publish changed (``covid_stats_contract.changes``, the one place that decides it)
and the publishes log (``covid_stats_contract.publishes``) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from covid_stats_contract.changes import (
    STATUS_RESOURCE,
    Changes,
    changed_documents,
    changes_between,
    describe,
)
from covid_stats_contract.documents import STATUS, document_families
from covid_stats_contract.publishes import publishes_after, record_publish
from covid_stats_contract.resources import STATES_DAILY, STATES_INFO, US_DAILY

pytestmark = pytest.mark.unit  # `make test-fast`

MI_DAILY = STATES_DAILY.state_document("MI")
MI_DAILY_CSV = STATES_DAILY.state_document("MI", "csv")
CA_INFO = STATES_INFO.state_document("CA")


def test_changed_documents_are_the_names_whose_digest_differs() -> None:
    before = {"v1/us/daily.json": "a", MI_DAILY: "b", CA_INFO: "c", STATUS: "s"}
    after = {"v1/us/daily.json": "a", MI_DAILY: "B", MI_DAILY_CSV: "n", STATUS: "t"}
    # changed, added, gone (CA's info), and the status; never an unchanged one
    assert changed_documents(before, after) == tuple(
        sorted([MI_DAILY, MI_DAILY_CSV, CA_INFO, STATUS])
    )
    assert changed_documents(before, before) == ()
    assert changed_documents({}, {}) == ()
    assert changed_documents({}, before) == tuple(sorted(before))  # a first publish: all


def test_describe_names_resources_in_order_and_states_as_the_upstream_writes_them() -> None:
    changes = describe([MI_DAILY, CA_INFO, STATUS, US_DAILY.document("csv"), MI_DAILY_CSV])
    assert changes.resources == ("us/daily", "states/daily", "states/info", STATUS_RESOURCE)
    assert changes.states == ("CA", "MI")  # upper case, sorted, each once
    assert changes.documents == tuple(
        sorted([MI_DAILY, CA_INFO, STATUS, US_DAILY.document("csv"), MI_DAILY_CSV])
    )
    assert describe(["v1/states/daily.json"]).states == ()  # a list names no state
    assert not describe([])
    assert describe([STATUS])
    with pytest.raises(ValueError, match="unknown document"):
        describe(["v1/nothing.json"])


def test_every_published_family_is_described() -> None:
    """Each document family the fetcher publishes maps to a resource (a new family that
    ``describe`` cannot place fails here, not in production)."""
    for family in document_families():
        name = family.replace("{state}", "wy")
        changes = describe([name])
        assert changes.resources, name
        assert changes.states == (("WY",) if "{state}" in family else ()), name


def test_changes_between_is_describe_of_changed_documents() -> None:
    before = {MI_DAILY: "1", STATUS: "1"}
    after = {MI_DAILY: "2", STATUS: "1"}
    assert changes_between(before, after) == Changes((MI_DAILY,), ("states/daily",), ("MI",))


def _run(database_url: str, scenario: object) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await scenario(conn)  # type: ignore[operator]
        finally:
            await conn.close()

    asyncio.run(main())


def test_record_publish_logs_only_changes_and_queues_deliveries(database_url: str) -> None:
    t0 = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)
    first = {MI_DAILY: "1", CA_INFO: "1", STATUS: "1"}

    async def scenario(conn: asyncpg.Connection) -> None:
        urls = ["http://a.test/hook", "http://b.test/hook", "http://a.test/hook"]
        logged = await record_publish(conn, "1", t0, first, urls)
        assert logged is not None
        assert logged.changes.states == ("CA", "MI")
        # the same documents again (a republish after Redis was flushed): nothing at all
        again = await record_publish(conn, "2", t0 + timedelta(seconds=1), first, urls)
        assert again is None
        assert await conn.fetchval("SELECT count(*) FROM publishes") == 1
        # one document changes: one row naming it, one delivery per distinct URL
        second = await record_publish(
            conn, "3", t0 + timedelta(seconds=2), {**first, MI_DAILY: "2"}, urls
        )
        assert second is not None
        assert second.changes == Changes((MI_DAILY,), ("states/daily",), ("MI",))
        deliveries = await conn.fetch(
            "SELECT url, state FROM webhook_deliveries WHERE publish_id = $1 ORDER BY url",
            second.id,
        )
        assert [(r["url"], r["state"]) for r in deliveries] == [
            ("http://a.test/hook", "pending"),
            ("http://b.test/hook", "pending"),
        ]
        # a document gone is a change too
        gone = await record_publish(
            conn, "4", t0 + timedelta(seconds=3), {MI_DAILY: "2", STATUS: "1"}
        )
        assert gone is not None
        assert gone.changes.documents == (CA_INFO,)

        # a publisher that lost the lease logs nothing: its successor compares with the same
        # last logged digests
        async def lost() -> bool:
            return False

        fenced = await record_publish(
            conn, "5", t0 + timedelta(seconds=4), {STATUS: "9"}, urls, lost
        )
        assert fenced is None
        assert await conn.fetchval("SELECT count(*) FROM publishes") == 3
        assert (
            await conn.fetchval(
                "SELECT content_hash FROM published_documents WHERE name = $1", STATUS
            )
            == "1"
        )

        after = await publishes_after(conn, t0)  # strictly after t0: not the first
        assert [p.snapshot_id for p in after] == ["3", "4"]
        page = await publishes_after(conn, t0 - timedelta(seconds=1), after_id=logged.id, limit=1)
        assert [p.snapshot_id for p in page] == ["3"]

    _run(database_url, scenario)
