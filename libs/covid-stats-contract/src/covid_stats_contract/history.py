"""The records' history in PostgreSQL: every version of every record (migration 0004).

Each resource table ``t`` has a version table ``t_versions`` written by triggers on ``t``
(so every release's writes are kept): the record's key, ``record`` (NULL: removed),
``first_seen`` (the ``fetched_at`` of the refresh that stored it), ``snapshot_id`` and
``published_at`` (the snapshot that first served it, stamped by the publisher). A refresh
that changes no record adds no version.

The publisher stamps the versions a publish will serve: :func:`stamp_snapshot` before the
snapshot is activated (so an answer computed for the new snapshot already names it) and
:func:`confirm_published` once it is. A publish that never activates leaves its versions
unconfirmed, and the next publish stamps them again with its own id.

Revisions (one row per changed value) are the differences between consecutive versions of
a key: :func:`revisions_statement`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache

from covid_stats_contract.resources import RESOURCES, Resource
from covid_stats_contract.schema import Executor


def versions_table(resource: Resource) -> str:
    """The table holding every version of ``resource``'s records."""
    return f"{resource.table}_versions"


async def stamp_snapshot(conn: Executor, snapshot_id: str) -> int:
    """Name ``snapshot_id`` as the snapshot of every version no publish has confirmed yet.
    Returns how many versions it stamped."""
    stamped = 0
    async with conn.transaction():
        for resource in RESOURCES:
            status = await conn.execute(
                f"UPDATE {versions_table(resource)} SET snapshot_id = $1 "  # noqa: S608
                "WHERE published_at IS NULL",
                int(snapshot_id),
            )
            stamped += int(status.split()[-1])
    return stamped


async def confirm_published(conn: Executor, snapshot_id: str, published_at: datetime) -> None:
    """Record that ``snapshot_id`` (stamped by :func:`stamp_snapshot`) is now served."""
    async with conn.transaction():
        for resource in RESOURCES:
            await conn.execute(
                f"UPDATE {versions_table(resource)} SET published_at = $2 "  # noqa: S608
                "WHERE published_at IS NULL AND snapshot_id = $1",
                int(snapshot_id),
                published_at,
            )


@dataclass(frozen=True, slots=True)
class TableSize:
    table: str
    rows: int
    bytes: int  # pg_total_relation_size: the table, its indexes and TOAST


async def sizes(conn: Executor) -> list[TableSize]:
    """Rows and bytes of every version table."""
    found = []
    for resource in RESOURCES:
        table = versions_table(resource)
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
        found.append(TableSize(table, int(rows), int(size)))
    return found


@cache
def revisions_statement(resource: Resource) -> str:
    """The revisions of ``resource``'s records, newest first (by when first seen, then
    date descending, then field): each row a field whose value differs between two
    consecutive versions of a record, both present (a removal or a re-appearance is no
    revision), the field being in both (a field the upstream added or dropped is none).
    Columns: ``state`` (NULL for US records), ``date``, ``field``, ``old``, ``new``
    (JSON text), ``first_seen``, ``snapshot_id``.

    Parameters: $1 state (NULL: every state; ignored for US records), $2 first date,
    $3 last date, $4 field, $5 first seen strictly after (each NULL: no bound), $6 how many
    rows at most."""
    table = versions_table(resource)
    if "date" not in resource.key_columns:
        raise ValueError(f"{resource.key} has no dated records")
    by_state = "state" in resource.key_columns
    state = "state" if by_state else "NULL::text AS state"
    partition = "state, date" if by_state else "date"
    state_filter = "($1::text IS NULL OR state = $1)" if by_state else "($1::text IS NULL OR TRUE)"
    return f"""
        WITH v AS (
            SELECT {state}, date, record::jsonb AS rec, first_seen, snapshot_id,
                   lag(record::jsonb) OVER (PARTITION BY {partition} ORDER BY version_id) AS prev
            FROM {table}
            WHERE {state_filter}
              AND ($2::int IS NULL OR date >= $2) AND ($3::int IS NULL OR date <= $3)
        )
        SELECT v.state, v.date, f.key AS field, (v.prev -> f.key)::text AS old,
               f.value::text AS new, v.first_seen, v.snapshot_id
        FROM v CROSS JOIN LATERAL jsonb_each(v.rec) AS f(key, value)
        WHERE v.prev IS NOT NULL AND v.rec IS NOT NULL
          AND ($5::timestamptz IS NULL OR v.first_seen > $5)
          AND ($4::text IS NULL OR f.key = $4)
          AND v.prev ? f.key AND (v.prev -> f.key) IS DISTINCT FROM f.value
        ORDER BY v.first_seen DESC, v.date DESC, v.state, f.key
        LIMIT $6
    """  # noqa: S608 - the table is a fixed name
