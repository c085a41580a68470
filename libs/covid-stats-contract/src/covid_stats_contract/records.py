"""Records in PostgreSQL: the fetcher's upserts, and documents rebuilt from the store.

The fetcher publishes what ``load_documents`` returns, and the api falls back to
``load_document`` when Redis cannot answer: both render through the same code, so a
document served from PostgreSQL is byte-identical to the one served from Redis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from covid_stats_contract.documents import (
    STATES_CURRENT,
    US_CURRENT,
    encode_record,
    render_array,
    render_object,
    state_current_name,
)
from covid_stats_contract.schema import Executor
from covid_stats_contract.snapshots import DocumentBody

Record = Mapping[str, Any]

_STATE_CURRENT_RE = re.compile(r"^v1/states/([a-z]{2})/current\.json$")

_UPSERT_US_CURRENT = """
INSERT INTO us_current (date, record, fetched_at) VALUES ($1, $2, $3)
ON CONFLICT (date) DO UPDATE SET record = EXCLUDED.record, fetched_at = EXCLUDED.fetched_at
WHERE us_current.record::text IS DISTINCT FROM EXCLUDED.record::text
"""

_UPSERT_STATES_CURRENT = """
INSERT INTO states_current (state, date, record, fetched_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (state, date) DO UPDATE SET record = EXCLUDED.record, fetched_at = EXCLUDED.fetched_at
WHERE states_current.record::text IS DISTINCT FROM EXCLUDED.record::text
"""

_SELECT_US_CURRENT = "SELECT record::text AS record FROM us_current ORDER BY date DESC LIMIT 1"

_SELECT_STATES_CURRENT = """
SELECT DISTINCT ON (state) state, record::text AS record
FROM states_current ORDER BY state, date DESC
"""

_SELECT_STATE_CURRENT = """
SELECT record::text FROM states_current WHERE state = $1 ORDER BY date DESC LIMIT 1
"""


async def upsert_us_current(
    conn: Executor, records: Sequence[Record], fetched_at: datetime
) -> None:
    """Store US current records, keyed on date (idempotent)."""
    await conn.executemany(
        _UPSERT_US_CURRENT,
        [(int(r["date"]), encode_record(r), fetched_at) for r in records],
    )


async def upsert_states_current(
    conn: Executor, records: Sequence[Record], fetched_at: datetime
) -> None:
    """Store state current records, keyed on (state, date) (idempotent)."""
    await conn.executemany(
        _UPSERT_STATES_CURRENT,
        [(str(r["state"]), int(r["date"]), encode_record(r), fetched_at) for r in records],
    )


async def load_documents(conn: Executor) -> list[DocumentBody]:
    """Every document the store can render now (empty when it holds no data)."""
    docs: list[DocumentBody] = []
    us = await conn.fetch(_SELECT_US_CURRENT)
    if us:
        docs.append(DocumentBody(US_CURRENT, render_array(row["record"] for row in us)))
    states = await conn.fetch(_SELECT_STATES_CURRENT)
    if states:
        docs.append(DocumentBody(STATES_CURRENT, render_array(row["record"] for row in states)))
        docs.extend(
            DocumentBody(state_current_name(row["state"]), render_object(row["record"]))
            for row in states
        )
    return docs


async def load_document(conn: Executor, name: str) -> bytes | None:
    """One document rendered from the store; None when the store has no data for it."""
    if name == US_CURRENT:
        rows = await conn.fetch(_SELECT_US_CURRENT)
        return render_array(row["record"] for row in rows) if rows else None
    if name == STATES_CURRENT:
        rows = await conn.fetch(_SELECT_STATES_CURRENT)
        return render_array(row["record"] for row in rows) if rows else None
    match = _STATE_CURRENT_RE.match(name)
    if match:
        text = await conn.fetchval(_SELECT_STATE_CURRENT, match[1].upper())
        return None if text is None else render_object(text)
    raise ValueError(f"unknown document {name!r}")


async def has_states(conn: Executor) -> bool:
    """Whether the store holds any state records (tells 'unknown state' from 'no data yet')."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM states_current)"))
