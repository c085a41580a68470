"""The records' history in PostgreSQL: every version of every record (migration 0004).

Each resource table ``t`` has a version table ``t_versions`` written by triggers on ``t``
(so every release's writes are kept): the record's key, ``record`` (NULL: removed),
``first_seen`` (the ``fetched_at`` of the refresh that stored it). A refresh that changes no
record adds no version. Version rows are written once, never updated.

Which snapshot first served a version is in ``record_versions_published``: the publisher
reads the newest version id of each table before rendering (:func:`version_marks`), adds a
row per table with newer versions once the snapshot is staged, before it is activated
(:func:`stamp_snapshot`: an answer computed for the new snapshot already names it), and
sets its ``published_at`` once it is (:func:`confirm_published`). A publish that never
activates leaves rows without ``published_at``; the next publish replaces them.

Revisions (one row per changed value) are the differences between consecutive versions of
a key: :func:`revisions_statement`.

What the api served at an instant (``as_of``): the snapshot current then is the newest
publish whose ``published_at`` is at or before it; its records are, per key, the newest
version up to that publish's mark (:func:`served_mark`), read by :func:`as_of_source`.
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


PUBLISHED = "record_versions_published"
"""Which versions each publish served (a range of version ids per version table)."""


async def version_marks(conn: Executor) -> dict[str, int]:
    """The newest version id of each version table (0: none): what documents rendered now
    serve. Read before rendering."""
    marks = {}
    for resource in RESOURCES:
        table = versions_table(resource)
        newest = await conn.fetchval(f"SELECT max(version_id) FROM {table}")  # noqa: S608
        marks[table] = int(newest or 0)
    return marks


async def stamp_snapshot(conn: Executor, snapshot_id: str, marks: dict[str, int]) -> int:
    """Record that snapshot ``snapshot_id`` (staged, not yet activated) serves the versions up
    to ``marks``: one row per version table with versions no publish served yet. Rows of a
    publish that never activated (``published_at`` NULL) are replaced. Returns the rows
    added. Versions are never updated."""
    added = 0
    async with conn.transaction():
        await conn.execute(f"DELETE FROM {PUBLISHED} WHERE published_at IS NULL")  # noqa: S608
        for table, up_to in marks.items():
            status = await conn.execute(
                f"INSERT INTO {PUBLISHED} (version_table, up_to, snapshot_id) "  # noqa: S608
                f"SELECT $1, $2, $3 WHERE $2 > (SELECT coalesce(max(up_to), 0) FROM {PUBLISHED} "
                "WHERE version_table = $1)",
                table,
                up_to,
                int(snapshot_id),
            )
            added += int(status.split()[-1])
    return added


async def confirm_published(conn: Executor, snapshot_id: str, published_at: datetime) -> None:
    """Record that ``snapshot_id`` (stamped by :func:`stamp_snapshot`) is now served."""
    await conn.execute(
        f"UPDATE {PUBLISHED} SET published_at = $2 "  # noqa: S608
        "WHERE snapshot_id = $1 AND published_at IS NULL",
        int(snapshot_id),
        published_at,
    )


@dataclass(frozen=True, slots=True)
class ServedMark:
    """What :func:`served_mark` found: ``up_to`` is the newest version id of the table the
    snapshot current at the instant served (None: no publish at or before it; 0: that
    snapshot held no version of the table); ``first_published`` is the first publish's
    time (None: nothing published yet)."""

    up_to: int | None
    first_published: datetime | None


async def served_mark(conn: Executor, resource: Resource, instant: datetime) -> ServedMark:
    """Which versions of ``resource``'s records the snapshot current at ``instant`` served."""
    (row,) = await conn.fetch(
        f"SELECT count(*) FILTER (WHERE published_at <= $1) AS before, "  # noqa: S608
        "coalesce(max(up_to) FILTER (WHERE published_at <= $1 AND version_table = $2), 0) "
        f"AS up_to, min(published_at) AS first FROM {PUBLISHED} WHERE published_at IS NOT NULL",
        instant,
        versions_table(resource),
    )
    if not row["before"]:
        return ServedMark(None, row["first"])
    return ServedMark(int(row["up_to"]), row["first"])


@cache
def as_of_source(resource: Resource, mark: str) -> str:
    """A FROM item with the columns of ``resource``'s table (its key columns and ``record``)
    holding the records as of a version mark: per key, its newest version with an id up to
    the SQL parameter ``mark`` (such as ``$1``), unless that version is a removal. Aliased
    as the table, so a statement written for the table reads it unchanged."""
    keys = ", ".join(resource.key_columns)
    table = versions_table(resource)
    return (
        f"(SELECT {keys}, record FROM (SELECT DISTINCT ON ({keys}) {keys}, record "  # noqa: S608
        f"FROM {table} WHERE version_id <= {mark} ORDER BY {keys}, version_id DESC) latest "
        f"WHERE record IS NOT NULL) AS {resource.table}"
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
    date descending, then field, then state): each row a field whose value differs between two
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
            SELECT {state}, date, version_id, record::jsonb AS rec, first_seen,
                   lag(record::jsonb) OVER (PARTITION BY {partition} ORDER BY version_id) AS prev
            FROM {table}
            WHERE {state_filter}
              AND ($2::int IS NULL OR date >= $2) AND ($3::int IS NULL OR date <= $3)
        )
        SELECT v.state, v.date, f.key AS field, (v.prev -> f.key)::text AS old,
               f.value::text AS new, v.first_seen,
               (SELECT p.snapshot_id FROM {PUBLISHED} p
                WHERE p.version_table = '{table}' AND p.up_to >= v.version_id
                ORDER BY p.up_to LIMIT 1) AS snapshot_id
        FROM v CROSS JOIN LATERAL jsonb_each(v.rec) AS f(key, value)
        WHERE v.prev IS NOT NULL AND v.rec IS NOT NULL
          AND ($5::timestamptz IS NULL OR v.first_seen > $5)
          AND ($4::text IS NULL OR f.key = $4)
          AND v.prev ? f.key AND (v.prev -> f.key) IS DISTINCT FROM f.value
        ORDER BY v.first_seen DESC, v.date DESC, f.key, v.state
        LIMIT $6
    """  # noqa: S608 - the table is a fixed name
