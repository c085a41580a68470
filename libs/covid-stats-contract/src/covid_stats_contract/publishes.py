"""The publishes log in PostgreSQL (migration 0005): one row per publish that changed a
document, what it changed (``changes``), and the webhook deliveries it owes.

The fetcher logs a publish right after its snapshot became current (``record_publish``), in
one transaction that compares the new documents' digests with the last logged ones, writes
the ``publishes`` row, updates ``published_documents`` and adds one ``webhook_deliveries``
row per webhook URL (an outbox: the sender works from it, in the background). The api reads
the log for ``GET /v1/changes.json`` (``publishes_after``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from covid_stats_contract.changes import Changes, changes_between

# pg_advisory_xact_lock key serializing the logging of publishes ("publish").
_LOG_LOCK_KEY = 0x7075626C697368


@dataclass(frozen=True, slots=True)
class Publish:
    """A row of ``publishes``."""

    id: int
    snapshot_id: str
    published_at: datetime
    changes: Changes


def _publish(row: Any) -> Publish:
    return Publish(
        row["id"],
        row["snapshot_id"],
        row["published_at"],
        Changes(tuple(row["documents"]), tuple(row["resources"]), tuple(row["states"])),
    )


async def record_publish(
    conn: Any,
    snapshot_id: str,
    published_at: datetime,
    digests: Mapping[str, str],
    webhook_urls: Sequence[str] = (),
    still_leading: Callable[[], Awaitable[bool]] | None = None,
) -> Publish | None:
    """Log the publish of snapshot ``snapshot_id`` whose documents have ``digests``
    ({name: digest}) and queue one webhook delivery per URL, in one transaction. Nothing is
    written (None) when no document changed since the last logged publish, or when
    ``still_leading`` says the publisher lost the leader lease (its successor logs the
    changes, which it compares with the same last logged digests)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOG_LOCK_KEY)
        rows = await conn.fetch("SELECT name, content_hash FROM published_documents")
        changes = changes_between({r["name"]: r["content_hash"] for r in rows}, digests)
        if not changes:
            return None
        if still_leading is not None and not await still_leading():
            return None
        publish_id = await conn.fetchval(
            "INSERT INTO publishes (snapshot_id, published_at, resources, states, documents) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            snapshot_id,
            published_at,
            list(changes.resources),
            list(changes.states),
            list(changes.documents),
        )
        await conn.execute(
            "DELETE FROM published_documents WHERE NOT (name = ANY($1::text[]))", list(digests)
        )
        await conn.executemany(
            "INSERT INTO published_documents (name, content_hash, publish_id) "
            "VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE "
            "SET content_hash = EXCLUDED.content_hash, publish_id = EXCLUDED.publish_id",
            [(name, digests[name], publish_id) for name in changes.documents if name in digests],
        )
        await conn.executemany(
            "INSERT INTO webhook_deliveries (publish_id, url) VALUES ($1, $2)",
            [(publish_id, url) for url in dict.fromkeys(webhook_urls)],
        )
    return Publish(publish_id, snapshot_id, published_at, changes)


async def publishes_after(
    conn: Any, since: datetime, after_id: int = 0, limit: int = 100
) -> list[Publish]:
    """The logged publishes later than ``since`` (and, for a next page, with an id above
    ``after_id``), oldest first, at most ``limit``."""
    rows = await conn.fetch(
        "SELECT id, snapshot_id, published_at, resources, states, documents FROM publishes "
        "WHERE published_at > $1 AND id > $2 ORDER BY id LIMIT $3",
        since,
        after_id,
        limit,
    )
    return [_publish(row) for row in rows]


async def publish_by_id(conn: Any, publish_id: int) -> Publish | None:
    row = await conn.fetchrow(
        "SELECT id, snapshot_id, published_at, resources, states, documents FROM publishes "
        "WHERE id = $1",
        publish_id,
    )
    return None if row is None else _publish(row)
