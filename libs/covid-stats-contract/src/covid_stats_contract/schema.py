"""The PostgreSQL schema: versioned SQL migrations and the runner that applies them.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied in order, each
in its own transaction, and recorded in ``schema_migrations`` with a checksum. Running the
runner again applies nothing; an applied migration whose file has changed is refused.
Concurrent runners (several pods starting at once) serialize on an advisory lock.

Expand/contract: the code of the previous release must keep running on a database that a
newer release has migrated (a rollback, an old pod restarting during a rollout). So a
migration is *additive* (new tables, nullable columns, indexes: nothing older code reads or
writes changes meaning) unless its file says otherwise with a header line

    -- breaking: <why older code cannot run on the result>

recorded in ``schema_migrations.breaks_older`` (NULL: additive; a row that a newer release
adds with only ``version``, ``name`` and ``checksum`` is an additive one). Code that finds
versions it does not know in ``schema_migrations`` carries on when they are all additive
(:func:`migrate` reports them in :attr:`Migrated.newer`) and refuses with
:class:`NewerBreakingMigration` when one of them is breaking. A breaking change ships in
two releases: docs/pipeline.md, "Schema migrations".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

# Any constant unique to this project; pg_advisory_lock takes a bigint.
_ADVISORY_LOCK_KEY = 0x636F766964  # "covid"

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# The header line by which a migration declares that it breaks the code of older releases.
_BREAKING_RE = re.compile(r"^--\s*breaking:\s*(\S.*?)\s*$", re.MULTILINE)


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

    @property
    def breaks_older(self) -> str | None:
        """Why this migration breaks the code of older releases (its ``-- breaking:``
        header line); None for an additive migration."""
        match = _BREAKING_RE.search(self.sql)
        return match[1] if match else None


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str
    breaks_older: str | None  # None: additive

    def describe(self) -> str:
        text = f"{self.version}_{self.name}"
        return text if self.breaks_older is None else f"{text} ({self.breaks_older})"


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


LATEST_VERSION = migrations()[-1].version


class MigrationError(RuntimeError):
    pass


class NewerBreakingMigration(MigrationError):
    """The database has migrations of a newer release that this code cannot run with."""

    def __init__(self, breaking: list[AppliedMigration]) -> None:
        self.versions = [m.version for m in breaking]
        super().__init__(
            f"the database has migrations of a newer release that break this release's code: "
            f"{', '.join(m.describe() for m in breaking)}; this release (schema version "
            f"{LATEST_VERSION}) must not run on it: deploy the release that applied them "
            "(or a newer one), or restore the database from a backup taken before them"
        )


class SchemaBehind(MigrationError):
    """The database lacks migrations of this release: run the migrations first."""

    def __init__(self, missing: list[int]) -> None:
        self.missing = missing
        super().__init__(
            f"the database lacks migrations {missing} of this release (schema version "
            f"{LATEST_VERSION}): run `stats-fetcher migrate`"
        )


@dataclass(frozen=True, slots=True)
class Migrated:
    """What :func:`migrate` did and found."""

    applied: list[int] = field(default_factory=list)  # versions applied by this call
    newer: list[AppliedMigration] = field(default_factory=list)  # additive, of newer releases


async def applied_migrations(conn: Executor) -> dict[int, AppliedMigration]:
    """The rows of ``schema_migrations`` by version; empty for a database never migrated.
    Reads ``breaks_older`` through ``to_jsonb`` so that a table from before that column
    (every row additive) reads too."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch(
        "SELECT version, name, checksum, to_jsonb(m) ->> 'breaks_older' AS breaks_older "
        "FROM schema_migrations m ORDER BY version"
    )
    return {row["version"]: AppliedMigration(**dict(row)) for row in rows}


def newer_migrations(applied: dict[int, AppliedMigration]) -> list[AppliedMigration]:
    """The applied migrations this code does not know (a newer release applied them);
    raises :class:`NewerBreakingMigration` when any of them breaks this code."""
    known = {m.version for m in migrations()}
    newer = [m for version, m in sorted(applied.items()) if version not in known]
    breaking = [m for m in newer if m.breaks_older is not None]
    if breaking:
        raise NewerBreakingMigration(breaking)
    return newer


async def check(conn: Executor) -> list[AppliedMigration]:
    """The startup check of a service: every migration of this release is applied
    (else :class:`SchemaBehind`) and none of a newer release breaks this code (else
    :class:`NewerBreakingMigration`). Returns the newer additive migrations found."""
    applied = await applied_migrations(conn)
    missing = [m.version for m in migrations() if m.version not in applied]
    if missing:
        raise SchemaBehind(missing)
    return newer_migrations(applied)


async def migrate(conn: Executor) -> Migrated:
    """Apply the migrations not applied yet. Versions of a newer release are left alone and
    reported when additive; a breaking one is refused (:class:`NewerBreakingMigration`)
    before anything is applied."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version      integer     PRIMARY KEY,
                   name         text        NOT NULL,
                   checksum     text        NOT NULL,
                   applied_at   timestamptz NOT NULL DEFAULT now(),
                   breaks_older text)"""
        )
        # A table created by a release from before the column: add it (NULL, additive).
        await conn.execute(
            "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS breaks_older text"
        )
        done = await applied_migrations(conn)
        newer = newer_migrations(done)
        for migration in migrations():
            if migration.version in done:
                if done[migration.version].checksum != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, breaks_older) "
                    "VALUES ($1, $2, $3, $4)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                    migration.breaks_older,
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return Migrated(applied_now, newer)


async def current_version(conn: Executor) -> int:
    """The highest applied migration; 0 for a database never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
