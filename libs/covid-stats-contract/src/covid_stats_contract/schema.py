"""The PostgreSQL schema: versioned SQL migrations and the runner that applies them.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied in order, each
in its own transaction, and recorded in ``schema_migrations`` with a checksum. Running the
runner again applies nothing; an applied migration whose file has changed is refused.
Concurrent runners (several pods starting at once) serialize on an advisory lock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

# Any constant unique to this project; pg_advisory_lock takes a bigint.
_ADVISORY_LOCK_KEY = 0x636F766964  # "covid"

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Executor(Protocol):
    """The part of an asyncpg connection (or pool proxy) that this package uses."""

    async def execute(self, query: str, *args: Any) -> str: ...
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    def transaction(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """All migrations shipped with this package, in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..N without gaps, found {versions}")
    return found


LATEST_VERSION = len(migrations())


class MigrationError(RuntimeError):
    pass


async def migrate(conn: Executor) -> list[int]:
    """Apply the migrations not applied yet. Returns the versions applied by this call."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   checksum   text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {row["version"]: row["checksum"] for row in rows}
        known = migrations()
        unknown = sorted(set(done) - {m.version for m in known})
        if unknown:
            raise MigrationError(
                f"the database has migrations {unknown} that this code does not know: "
                "it was migrated by a newer release"
            )
        for migration in known:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now


async def current_version(conn: Executor) -> int:
    """The highest applied migration; 0 for a database never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
