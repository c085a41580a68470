"""Records in PostgreSQL: the fetcher's bulk sync, and documents rendered from the store.

The fetcher publishes what ``load_documents`` returns and the api falls back to
``load_document`` when Redis cannot answer: both render through the same code, so a document
served from PostgreSQL is byte-identical to the one served from Redis.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from covid_stats_contract.documents import (
    CONTENT_TYPES,
    JSON_CONTENT_TYPE,
    STATE_PLACEHOLDER,
    STATUS,
    Compressed,
    DocumentBody,
    content_hash,
    encode_record,
    render_array,
    render_csv,
    render_object,
)
from covid_stats_contract.resources import (
    FORMATS,
    RESOURCES,
    Format,
    Resource,
    state_code_pattern,
)
from covid_stats_contract.schema import Executor

Record = Mapping[str, Any]

# The documents ``load_document`` renders, from the resources (as ``document_families``
# names them): each list by its name, each state's document by its family's name around the
# state's code (lower case, as the names carry it).
_LISTS: dict[str, tuple[Resource, Format]] = {
    resource.document(fmt): (resource, fmt) for resource in RESOURCES for fmt in FORMATS
}
_STATE_FAMILIES: tuple[tuple[str, str, Resource, Format], ...] = tuple(
    (before, after, resource, fmt)
    for resource in RESOURCES
    if resource.per_state is not None
    for fmt in FORMATS
    for before, _, after in [
        resource.state_document(STATE_PLACEHOLDER, fmt).partition(STATE_PLACEHOLDER)
    ]
)
_STATE_IN_NAME = re.compile(state_code_pattern("lower"))


def document_of(name: str) -> tuple[Resource, Format, str | None]:
    """The resource, format and state (upper case; None for a list) a document's name
    names; ValueError for a name that is no resource's document."""
    found = _LISTS.get(name)
    if found is not None:
        return (*found, None)
    for before, after, resource, fmt in _STATE_FAMILIES:
        if name.startswith(before) and name.endswith(after):
            code = name[len(before) : len(name) - len(after)]
            if _STATE_IN_NAME.fullmatch(code):
                return resource, fmt, code.upper()
    raise ValueError(f"unknown document {name!r}")


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """What the fetcher last stored of one resource (table ``upstream_resources``)."""

    resource: str
    etag: str | None
    last_modified: str | None
    content_hash: str
    record_count: int
    jurisdictions: int
    fetched_at: datetime
    body_bytes: int | None = None  # the upstream body's size; None for rows stored before it

    def source(self) -> dict[str, str]:
        """Freshness metadata for the documents rendered from this resource."""
        return {
            "fetched_at": self.fetched_at.isoformat().replace("+00:00", "Z"),
            "upstream_etag": self.etag or "",
            "upstream_last_modified": self.last_modified or "",
        }


@dataclass(frozen=True, slots=True)
class SyncResult:
    written: int  # rows inserted or changed
    deleted: int  # rows the new payload no longer has


async def upstream_states(conn: Executor) -> dict[str, UpstreamState]:
    rows = await conn.fetch(
        "SELECT resource, etag, last_modified, content_hash, record_count, jurisdictions, "
        "fetched_at, body_bytes FROM upstream_resources"
    )
    return {row["resource"]: UpstreamState(**dict(row)) for row in rows}


def key_of(resource: Resource, record: Record) -> tuple[Any, ...]:
    return tuple(record[column] for column in resource.key_columns)


async def sync_resource(
    conn: Any, resource: Resource, records: Sequence[Record], state: UpstreamState
) -> SyncResult:
    """Make the resource's table hold exactly ``records`` and record ``state``, in one
    transaction: bulk COPY into a temporary table, then one upsert that only touches
    changed rows and one delete of the rows the payload no longer has. Idempotent."""
    table, keys = resource.table, resource.key_columns
    key_list = ", ".join(keys)
    # Every statement names its columns: columns a newer release adds (nullable, or with a
    # default: migrations are additive) are left to their defaults and change nothing here.
    columns = ", ".join([*keys, "record", "fetched_at"])
    on_keys = " AND ".join(f"i.{k} = t.{k}" for k in keys)
    rows = [(*key_of(resource, r), encode_record(r), state.fetched_at) for r in records]
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE incoming ON COMMIT DROP AS "  # noqa: S608 - fixed names
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        await conn.copy_records_to_table(
            "incoming", records=rows, columns=[*keys, "record", "fetched_at"]
        )
        written = await conn.execute(
            f"INSERT INTO {table} AS t ({columns}) "  # noqa: S608 - fixed names
            f"SELECT {columns} FROM incoming "
            f"ON CONFLICT ({key_list}) DO UPDATE "
            "SET record = EXCLUDED.record, fetched_at = EXCLUDED.fetched_at "
            "WHERE t.record::text IS DISTINCT FROM EXCLUDED.record::text"
        )
        deleted = await conn.execute(
            f"DELETE FROM {table} t "  # noqa: S608 - fixed names
            f"WHERE NOT EXISTS (SELECT 1 FROM incoming i WHERE {on_keys})"
        )
        await conn.execute(
            """INSERT INTO upstream_resources AS u (resource, etag, last_modified,
                   content_hash, record_count, jurisdictions, fetched_at, body_bytes)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (resource) DO UPDATE SET etag = EXCLUDED.etag,
                   last_modified = EXCLUDED.last_modified,
                   content_hash = EXCLUDED.content_hash,
                   record_count = EXCLUDED.record_count,
                   jurisdictions = EXCLUDED.jurisdictions, fetched_at = EXCLUDED.fetched_at,
                   body_bytes = EXCLUDED.body_bytes""",
            resource.key,
            state.etag,
            state.last_modified,
            state.content_hash,
            state.record_count,
            state.jurisdictions,
            state.fetched_at,
            state.body_bytes,
        )
    return SyncResult(int(written.split()[-1]), int(deleted.split()[-1]))


async def _rows(conn: Executor, resource: Resource, state: str | None = None) -> list[Any]:
    # Table, column and ORDER BY text are the fixed values of the Resource definitions.
    select = f"SELECT {', '.join(resource.key_columns)}, record::text AS record FROM "  # noqa: S608
    if state is None:
        return await conn.fetch(f"{select}{resource.table} ORDER BY {resource.order_by}")
    return await conn.fetch(
        f"{select}{resource.table} WHERE state = $1 ORDER BY {resource.order_by}", state
    )


def _render(
    texts: Sequence[str], fmt: Format, as_list: bool, parsed: Sequence[Record] | None = None
) -> bytes:
    if fmt == "csv":
        return render_csv(parsed if parsed is not None else [json.loads(t) for t in texts])
    return render_array(texts) if as_list else render_object(texts[0])


def _render_resource(
    resource: Resource, rows: Sequence[Any], source: Mapping[str, str]
) -> list[DocumentBody]:
    texts = [row["record"] for row in rows]
    parsed = [json.loads(text) for text in texts]  # once, for every CSV document
    docs = [
        DocumentBody(
            resource.document(fmt), _render(texts, fmt, True, parsed), CONTENT_TYPES[fmt], source
        )
        for fmt in FORMATS
    ]
    if resource.per_state is not None:
        by_state: dict[str, tuple[list[str], list[Record]]] = {}
        for row, record in zip(rows, parsed, strict=True):
            state_texts, state_parsed = by_state.setdefault(row["state"], ([], []))
            state_texts.append(row["record"])
            state_parsed.append(record)
        for state, (state_texts, state_parsed) in by_state.items():
            for fmt in FORMATS:
                body = _render(state_texts, fmt, resource.per_state_is_list, state_parsed)
                docs.append(
                    DocumentBody(
                        resource.state_document(state, fmt), body, CONTENT_TYPES[fmt], source
                    )
                )
    return docs


def _status(states: Mapping[str, UpstreamState]) -> DocumentBody | None:
    """``v1/status.json`` in the upstream's shape, describing the data this store holds:
    ``buildTime`` is when its newest resource was fetched, ``runNumber`` a digest of the
    resources' content (it changes exactly when the data does)."""
    if not states:
        return None
    latest = max(state.fetched_at for state in states.values())
    digest = content_hash("".join(s.content_hash for _, s in sorted(states.items())).encode())
    status = {
        "buildTime": latest.strftime("%Y-%m-%dT%H:%M:%S.") + f"{latest.microsecond // 1000:03d}Z",
        "production": True,
        "runNumber": digest[:12],
    }
    return DocumentBody(STATUS, render_object(encode_record(status)), JSON_CONTENT_TYPE)


async def load_documents(
    conn: Executor, previous: Mapping[str, Compressed] | None = None
) -> list[DocumentBody]:
    """Every document the store can render now (empty when it holds no data), compressed:
    a document whose bytes are ``previous``'s (by name: the snapshot before, compressed the
    same way) takes its forms over (``DocumentBody.compressed``). Rendering runs in a thread:
    it is CPU work that must not stall the caller's event loop."""
    previous = previous or {}
    states = await upstream_states(conn)
    fetched = [(resource, await _rows(conn, resource)) for resource in RESOURCES]

    def render() -> list[DocumentBody]:
        docs: list[DocumentBody] = []
        for resource, rows in fetched:
            if rows:
                state = states.get(resource.key)
                docs.extend(_render_resource(resource, rows, state.source() if state else {}))
        status = _status(states)
        if docs and status is not None:
            docs.append(status)
        return [doc.compressed(previous.get(doc.name)) for doc in docs]

    return await asyncio.to_thread(render)


async def load_document(conn: Executor, name: str) -> DocumentBody | None:
    """One document rendered from the store; None when the store has no data for it.
    Raises ValueError for a name that is no document."""
    if name == STATUS:
        return _status(await upstream_states(conn))
    resource, fmt, state = document_of(name)
    as_list = state is None or resource.per_state_is_list
    rows = await _rows(conn, resource, state)
    if not rows:
        return None
    texts = [row["record"] for row in rows]
    body = await asyncio.to_thread(_render, texts, fmt, as_list)
    return DocumentBody(name, body, CONTENT_TYPES[fmt])


async def has_states(conn: Executor) -> bool:
    """Whether the store holds any state records (tells 'unknown state' from 'no data yet')."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM states_current)"))
