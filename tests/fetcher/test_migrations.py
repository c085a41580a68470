"""Expand/contract: this release's code on a database that a newer release has migrated
(a rollback, an old pod restarting during a rollout). Real processes (``stats-fetcher
migrate``, ``stats-fetcher run``, the api under gunicorn) on a real PostgreSQL; the newer
release's migration is applied by hand, as its runner would apply it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx

from covid_stats_contract import schema
from devstack.procs import wait_until
from stacks import Template
from support import Fetcher, Upstream, clean_env, fail_fast_env, run_fetcher, sql

TOKEN = "test-refresh-token"
NEWER = schema.LATEST_VERSION + 1  # the first version this release does not know

# What a newer release's additive migration may do: a new table, nullable columns (and a
# defaulted NOT NULL one, an identity and a generated one: code that copies whole rows with
# `SELECT *` breaks on those) on the data tables and on upstream_resources, an index.
NEWER_ADDITIVE_SQL = """
CREATE TABLE newer_feature (id bigint PRIMARY KEY, note text);
ALTER TABLE states_daily ADD COLUMN newer_note text;
ALTER TABLE states_daily ADD COLUMN newer_id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE states_daily ADD COLUMN newer_positive bigint
    GENERATED ALWAYS AS ((record ->> 'positive')::bigint) STORED;
ALTER TABLE us_current ADD COLUMN newer_flag boolean NOT NULL DEFAULT false;
ALTER TABLE upstream_resources ADD COLUMN newer_size bigint;
CREATE INDEX states_daily_newer_note_idx ON states_daily (newer_note);
"""


def apply_newer(database_url: str, breaks_older: str | None = None) -> None:
    """A newer release's migration NEWER, as its runner records it: an additive one with only
    version, name and checksum (the row an older runner writes); a breaking one with
    ``breaks_older``."""

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute(NEWER_ADDITIVE_SQL)
                if breaks_older is None:
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, 'newer_additive', 'newer-checksum')",
                        NEWER,
                    )
                else:
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum, breaks_older) "
                        "VALUES ($1, 'newer_breaking', 'newer-checksum', $2)",
                        NEWER,
                        breaks_older,
                    )
        finally:
            await conn.close()

    asyncio.run(run())


def log_events(output: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` in a process's output."""
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


def output_of(result: Any) -> str:
    return str(result.stdout.decode() + result.stderr.decode())


def _refresh_now(fetcher: Fetcher) -> None:
    before = fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count")
    response = httpx.post(f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202, response.text
    wait_until(
        lambda: fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count") > before,
        30,
        what="the requested refresh",
    )


def test_this_release_runs_on_a_database_a_newer_release_migrated_additively(
    empty_database_url: str,
    redis_url: str,
    upstream: Upstream,
    fetcher_factory: Any,
    api_factory: Any,
    template: Template,
) -> None:
    env = fail_fast_env(
        redis_url,
        empty_database_url,
        upstream.url,
        REFRESH_TOKEN=TOKEN,
        FETCH_INTERVAL_SECONDS="3600",
    )
    assert run_fetcher("migrate", env).returncode == 0
    # Data of this release's shape: what one refresh-once published (the session's, copied).
    template.copy_into(redis_url, empty_database_url)
    apply_newer(empty_database_url)
    sql(empty_database_url, "UPDATE states_daily SET newer_note = 'kept' WHERE state = 'NY'")

    # This release's migrate: nothing to apply, the newer version named, exit 0.
    result = run_fetcher("migrate", {**env, "LOG_LEVEL": "INFO"})
    assert result.returncode == 0, output_of(result)
    (found,) = log_events(output_of(result), "schema_newer_additive")
    assert found["versions"] == [NEWER]
    assert log_events(output_of(result), "migrated")[0]["applied"] == []

    # A fetcher started anew accepts the schema, says so, and is ready.
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(lambda: fetcher.ready().get("postgres") == "ok", 30, what="the fetcher ready")
    wait_until(
        lambda: log_events(fetcher.process.output(), "schema_newer_additive") != [],
        10,
        what="the fetcher's log of the newer migration",
    )
    assert "schema" not in fetcher.ready()

    # Changed data: refreshes write it into the tables with the newer columns.
    daily: list[dict[str, Any]] = json.loads(upstream.get("/v1/states/daily.json").content)
    ny = next(r for r in daily if r["state"] == "NY")
    ny["positive"] = (ny["positive"] or 0) + 1000
    dropped = daily.pop()  # a row the payload no longer has: deleted
    upstream.fault("/v1/states/daily.json", "body", body=daily)
    us: list[dict[str, Any]] = json.loads(upstream.get("/v1/us/current.json").content)
    us[0]["death"] += 7
    upstream.fault("/v1/us/current.json", "body", body=us)
    _refresh_now(fetcher)

    stored = sql(
        empty_database_url,
        "SELECT record::text AS record, newer_note, newer_positive FROM states_daily "
        "WHERE state = 'NY' AND date = $1",
        ny["date"],
    )
    assert json.loads(stored[0]["record"]) == ny
    assert stored[0]["newer_note"] == "kept"  # the newer release's column left alone
    assert stored[0]["newer_positive"] == ny["positive"]  # and its derived one derived
    gone = sql(
        empty_database_url,
        "SELECT 1 FROM states_daily WHERE state = $1 AND date = $2",
        dropped["state"],
        dropped["date"],
    )
    assert gone == []
    flags = sql(empty_database_url, "SELECT newer_flag FROM us_current")
    assert [row["newer_flag"] for row in flags] == [False]
    counts = sql(empty_database_url, "SELECT record_count FROM upstream_resources")
    assert len(counts) == 5
    assert sql(empty_database_url, "SELECT count(*) AS n FROM states_daily")[0]["n"] == len(daily)

    # The api serves the changed data, from Redis and from PostgreSQL (a query).
    api = api_factory(env)
    wait_until(
        lambda: json.loads(httpx.get(f"{api}/v1/us/current.json").content) == us,
        30,
        what="the api to serve the changed us/current",
    )
    day = str(ny["date"])
    iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    answer = httpx.get(
        f"{api}/v1/states/daily.json", params={"states": "ny", "from": iso, "to": iso}
    )
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.content) == [ny]


def test_a_newer_breaking_migration_is_refused_by_migrate_and_by_the_fetcher(
    empty_database_url: str,
    redis_url: str,
    upstream: Upstream,
    fetcher_factory: Any,
) -> None:
    env = clean_env(
        REDIS_URL=redis_url, DATABASE_URL=empty_database_url, UPSTREAM_BASE_URL=upstream.url
    )
    assert run_fetcher("migrate", env).returncode == 0
    apply_newer(empty_database_url, breaks_older="states_daily.record becomes jsonb")

    result = run_fetcher("migrate", env)
    assert result.returncode != 0
    (refused,) = log_events(output_of(result), "migrate_refused")
    assert refused["versions"] == [NEWER]
    assert f"{NEWER}_newer_breaking (states_daily.record becomes jsonb)" in refused["reason"]
    assert "deploy the release that applied them" in refused["reason"]

    fetcher: Fetcher = fetcher_factory(env)
    wait_until(lambda: "schema" in fetcher.ready(), 30, what="the fetcher's schema verdict")
    ready = httpx.get(f"{fetcher.url}/readyz")
    assert ready.status_code == 503
    assert fetcher.ready()["postgres"] == "down"
    assert f"{NEWER}_newer_breaking" in fetcher.ready()["schema"]
    wait_until(
        lambda: any(
            f"{NEWER}_newer_breaking" in entry["error"]
            for entry in log_events(fetcher.process.output(), "schema_not_ready")
        ),
        30,
        what="the fetcher's log of the refusal",
    )
    assert (
        sql(empty_database_url, "SELECT count(*) AS n FROM upstream_resources")[0]["n"] == 0
    )  # nothing written
