"""Published data for the tests: one real refresh per session, cloned where a test needs data.

Most api and system tests need what one ``stats-fetcher refresh-once`` of the session's replay
upstream leaves in the stores, and test something else than the refresh (tests/fetcher tests
the refresh itself). That refresh costs seconds of CPU: the fetcher validates and stores about
20,000 records and renders and compresses 347 documents, PostgreSQL writes them. Cloning its
result costs milliseconds. So the session runs it once, for real, into stores of its own (the
template), and a test clones it into its own:

- PostgreSQL: ``CREATE DATABASE <clone> TEMPLATE <template>`` (a copy of the files);
- Redis: every key of the template's database number dumped and restored into the test's
  (TTLs kept).

A test on servers of its own (it stops or kills them: the fault suite) cannot take a copy of
the template's files; ``Template.copy_into`` copies its rows into the test's migrated database
(``pg_dump --data-only`` into ``psql``) and its keys into the test's Redis, in about a second.

A clone holds exactly what the refresh left: the records, the upstream's validators (a later
refresh asks the upstream conditionally and finds it unchanged, as after the real one), the
snapshot and its documents. Only the clock has moved: the snapshot was published when the
template was made, earlier in the session.

``loaded_stack`` is the other sharing: the api under gunicorn over such data, for a module or
the session, when its tests only read.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import itertools
import json
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from covid_stats_contract import schema
from devstack.procs import wait_until
from devstack.servers import pg_bin_dir
from support import (
    ApiUrl,
    Upstream,
    clean_env,
    fail_fast_env,
    http_ok,
    run_fetcher,
    start_api,
)

_names = itertools.count()


def admin(url: str, sql: str) -> None:
    """Run one statement on the PostgreSQL server of ``url`` (CREATE/DROP DATABASE)."""

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def migrate(url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await schema.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())


def database_name(kind: str) -> str:
    """A database name no other test of this session, or other session, takes."""
    return f"t_{kind}_{os.getpid()}_{next(_names)}"


def with_database(url: str, name: str) -> str:
    """``url`` (a PostgreSQL URL) naming database ``name``."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def redis_db(url: str) -> int:
    path = urllib.parse.urlsplit(url).path.strip("/")
    return int(path) if path else 0


def with_redis_db(url: str, db: int) -> str:
    """``url`` (a Redis URL) naming database number ``db``."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


@contextmanager
def new_database(server_url: str, kind: str, template: str = "") -> Iterator[str]:
    """A database of its own on the server of ``server_url`` (a copy of ``template`` when
    named), dropped after; yields its URL."""
    name = database_name(kind)
    clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    admin(server_url, f'CREATE DATABASE "{name}"{clause}')
    try:
        yield with_database(server_url, name)
    finally:
        admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_tool(tool: str, *args: str, stdin: bytes | None = None) -> bytes:
    """Run one of PostgreSQL's client programs (the pgserver wheel's); returns its output."""
    result = subprocess.run(
        [str(pg_bin_dir() / tool), *args], input=stdin, capture_output=True, check=False
    )
    assert result.returncode == 0, (tool, result.stderr.decode(errors="replace"))
    return result.stdout


def copy_rows(source_url: str, target_url: str) -> None:
    """Copy every row of the database of ``source_url`` into the database of ``target_url``
    (on any server; migrated to the same schema, its tables empty), the sequences' values
    too; ``schema_migrations`` is the target's own. ``pg_dump --data-only`` into ``psql``,
    triggers off while it loads (so foreign keys need no order)."""
    dump = _pg_tool("pg_dump", *_DATA_ONLY, f"--dbname={source_url}")
    _pg_tool(*_PSQL_LOAD, f"--dbname={target_url}", stdin=dump)


_DATA_ONLY = ("--data-only", "--disable-triggers", "--exclude-table-data=schema_migrations")
_PSQL_LOAD = ("psql", "--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1")


# The Redis database number the session's template keeps its keys in (the tests' own
# fixtures flush database 0 of the same server, or of TEST_REDIS_URL, before each test).
TEMPLATE_REDIS_DB = 15


@dataclass(frozen=True)
class Template:
    """What one ``refresh-once`` of the session upstream left in PostgreSQL and Redis."""

    server_url: str  # the PostgreSQL server's URL
    database: str  # the template database's name
    redis_url: str  # the template's Redis database
    refreshed_after: datetime  # an instant before its refresh began (so before its publish)

    def clone_redis(self, redis_url: str) -> int:
        """Copy every key of the template into the database of ``redis_url`` (emptied
        first), on the template's server or another one (``DUMP``/``RESTORE``, TTLs kept);
        returns how many."""
        entries = _dumped(self.redis_url)
        _restore(redis_url, entries)
        return len(entries)

    def copy_into(self, redis_url: str, database_url: str) -> None:
        """The template copied into stores on other servers (a test's own, which it may stop
        or kill): its keys into ``redis_url``'s database, its rows into ``database_url``'s
        database (migrated, empty), as ``refresh-once`` of the session upstream leaves them."""
        self.clone_redis(redis_url)
        copy_rows(with_database(self.server_url, self.database), database_url)

    @contextmanager
    def clone(self, redis_url: str) -> Iterator[str]:
        """The template cloned: its keys into ``redis_url``'s database, its database into a
        new one (dropped after); yields the new database's URL."""
        self.clone_redis(redis_url)
        with new_database(self.server_url, "clone", template=self.database) as url:
            yield url


def _refresh_into(template_redis: str, database_url: str, upstream: Upstream) -> datetime:
    """One real ``refresh-once`` of ``upstream`` into the (empty, migrated) stores; returns an
    instant before it began."""
    upstream.reset()
    refreshed_after = datetime.now(UTC)
    result = run_fetcher("refresh-once", fail_fast_env(template_redis, database_url, upstream.url))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    upstream.reset()  # its request counters as a fresh upstream's, whichever way it was made
    return refreshed_after


# The files of a run's shared template (``published_template(..., shared=folder)``).
_ROWS, _KEYS, _MADE = "template-rows.sql", "template-keys.json", "template-made.json"


def _export(
    folder: Path, template_redis: str, database_url: str, refreshed_after: datetime
) -> None:
    """Write what the refresh left to ``folder``: the rows (``pg_dump --data-only``, as
    ``copy_rows`` loads them), every key with its TTL (``DUMP``), then the marker file that
    says the others are whole (written last, renamed into place)."""
    (folder / _ROWS).write_bytes(_pg_tool("pg_dump", *_DATA_ONLY, f"--dbname={database_url}"))
    entries = [[_b64(key), ttl, _b64(payload)] for key, ttl, payload in _dumped(template_redis)]
    (folder / _KEYS).write_text(json.dumps(entries))
    scratch = folder / f"{_MADE}.partial"
    scratch.write_text(json.dumps({"refreshed_after": refreshed_after.isoformat()}))
    scratch.rename(folder / _MADE)


def _import(folder: Path, template_redis: str, database_url: str) -> datetime:
    """Load a template ``_export`` wrote into the (empty, migrated) stores; returns the
    instant before its refresh began."""
    _pg_tool(*_PSQL_LOAD, f"--dbname={database_url}", stdin=(folder / _ROWS).read_bytes())
    entries = json.loads((folder / _KEYS).read_text())
    _restore(template_redis, [(_unb64(k), ttl, _unb64(p)) for k, ttl, p in entries])
    made = json.loads((folder / _MADE).read_text())
    return datetime.fromisoformat(made["refreshed_after"])


def _dumped(redis_url: str) -> list[tuple[bytes, int, bytes]]:
    """Every key of ``redis_url``'s database: the key, its TTL (ms; negative: none) and its
    ``DUMP``."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(count=1000))
        read = client.pipeline(transaction=False)
        for key in keys:
            read.pttl(key)
            read.dump(key)
        answers = read.execute()
    finally:
        client.close()
    entries = list(zip(keys, answers[::2], answers[1::2], strict=True))
    assert all(payload is not None for _, _, payload in entries)  # no key expired meanwhile
    return entries


def _restore(redis_url: str, entries: list[tuple[bytes, int, bytes]]) -> None:
    """``_dumped``'s entries into ``redis_url``'s database, emptied first (TTLs kept)."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
        write = client.pipeline(transaction=False)
        for key, ttl, payload in entries:
            write.restore(key, max(ttl, 0), payload, replace=True)
        write.execute()
    finally:
        client.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@contextmanager
def published_template(
    redis_server_url: str,
    postgres_server_url: str,
    upstream: Upstream,
    shared: Path | None = None,
) -> Iterator[Template]:
    """The session's template, in stores of its own (dropped after): what one real
    ``refresh-once`` of ``upstream`` leaves.

    With ``shared`` (a folder all of a run's xdist workers see), the run refreshes once: the
    first worker here runs the refresh and writes its result to the folder, every other
    worker loads that into its own template (its own servers: each worker's upstream serves
    the same data, with the same validators, so a clone's later conditional refresh finds it
    unchanged there too). The refresh is deterministic in what it stores; only its instant
    (``refreshed_after``) is the first worker's."""
    template_redis = with_redis_db(redis_server_url, TEMPLATE_REDIS_DB)
    redis.Redis.from_url(template_redis).flushdb()
    with new_database(postgres_server_url, "template") as database_url:
        migrate(database_url)
        if shared is None:
            refreshed_after = _refresh_into(template_redis, database_url, upstream)
        else:
            with _exclusive(shared / "template.lock"):
                if (shared / _MADE).exists():
                    refreshed_after = _import(shared, template_redis, database_url)
                else:
                    refreshed_after = _refresh_into(template_redis, database_url, upstream)
                    _export(shared, template_redis, database_url, refreshed_after)
        name = urllib.parse.urlsplit(database_url).path.strip("/")
        try:
            yield Template(postgres_server_url, name, template_redis, refreshed_after)
        finally:
            redis.Redis.from_url(template_redis).flushdb()


@dataclass(frozen=True)
class Stack:
    """An api over published data: its base URL, its services' environment, the upstream."""

    base: ApiUrl
    env: dict[str, str]
    upstream: Upstream
    log_dir: Path

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=headers, timeout=30)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        return response.json()


# Redis database numbers for the stacks (the template's excluded): a stack's keys have no prefix
# of their own (the template's are the default prefix's), so each has a database number.
_STACK_REDIS_DBS = list(range(1, TEMPLATE_REDIS_DB))


@contextmanager
def redis_database(redis_server_url: str) -> Iterator[str]:
    """A Redis database number of its own on the server of ``redis_server_url`` (flushed
    after), which no test's flush reaches; yields its URL."""
    db = _STACK_REDIS_DBS.pop()
    redis_url = with_redis_db(redis_server_url, db)
    try:
        yield redis_url
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            client.flushdb()
        finally:
            client.close()
        _STACK_REDIS_DBS.append(db)


@contextmanager
def cloned_env(
    template: Template, redis_server_url: str, upstream: Upstream, **settings: str
) -> Iterator[dict[str, str]]:
    """The services' environment over a clone of ``template`` on a PostgreSQL database and a
    Redis database number of their own (dropped and flushed after), so the other tests'
    truncations and flushes never meet it; ``settings`` added to it."""
    with redis_database(redis_server_url) as redis_url, template.clone(redis_url) as database_url:
        yield clean_env(
            REDIS_URL=redis_url,
            DATABASE_URL=database_url,
            UPSTREAM_BASE_URL=upstream.url,
            **settings,
        )


def wait_ready(base: str) -> None:
    """Wait until the api at ``base`` says it is ready (it serves data)."""
    wait_until(lambda: http_ok(f"{base}/readyz"), 30, interval=0.1, what="the api ready")


@contextmanager
def loaded_stack(
    template: Template, redis_server_url: str, upstream: Upstream, log_dir: Path, **settings: str
) -> Iterator[tuple[ApiUrl, dict[str, str]]]:
    """The api under gunicorn (2 workers) over a clone of ``template`` (``cloned_env``);
    yields its base URL and the environment of its services (to run the fetcher or another
    api over the same stores), ``settings`` added to it."""
    with cloned_env(
        template,
        redis_server_url,
        upstream,
        UPSTREAM_RETRIES="1",
        UPSTREAM_RETRY_INITIAL_SECONDS="0.05",
        UPSTREAM_TIMEOUT_SECONDS="5",
        **settings,
    ) as env:
        process, base = start_api(env, log_dir)
        try:
            wait_ready(base)
            yield base, env
        finally:
            process.stop()
