"""The stats-fetcher as a real process against the real replay upstream, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import asyncpg
import httpx
import redis
from redis.asyncio import Redis as AsyncRedis

from conftest import Upstream
from covid_stats_contract.documents import STATES_CURRENT, US_CURRENT, state_current_name
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from devstack.procs import free_port, wait_until
from support import clean_env, python_module, run_fetcher, spawn


def _current_document(redis_url: str, name: str) -> bytes | None:
    """The body of document ``name`` in the current snapshot, read as the api reads it."""

    async def read() -> bytes | None:
        client = AsyncRedis.from_url(redis_url)
        try:
            found = await SnapshotStore(client, RedisKeys()).read(name)
        finally:
            await client.aclose()
        return None if found.document is None else found.document.body

    return asyncio.run(read())


def _count(database_url: str, table: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
        finally:
            await conn.close()

    return asyncio.run(count())


def test_refresh_stores_every_record_and_publishes_the_upstream_bytes(
    service_env: dict[str, str], redis_url: str, database_url: str, upstream: Upstream
) -> None:
    result = run_fetcher("refresh-once", service_env)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()

    us = httpx.get(f"{upstream.url}/v1/us/current.json").content
    states = httpx.get(f"{upstream.url}/v1/states/current.json").content
    assert _count(database_url, "us_current") == len(json.loads(us)) == 1
    assert _count(database_url, "states_current") == len(json.loads(states)) == 56
    assert _current_document(redis_url, US_CURRENT) == us
    assert _current_document(redis_url, STATES_CURRENT) == states
    california = next(r for r in json.loads(states) if r["state"] == "CA")
    ca_doc = _current_document(redis_url, state_current_name("CA"))
    assert ca_doc is not None
    assert json.loads(ca_doc) == california
    assert list(json.loads(ca_doc)) == list(california)  # key order kept


def test_refresh_is_idempotent(service_env: dict[str, str], database_url: str) -> None:
    for _ in range(2):
        assert run_fetcher("refresh-once", service_env).returncode == 0
    assert _count(database_url, "states_current") == 56
    assert _count(database_url, "us_current") == 1


def test_an_unreachable_upstream_keeps_the_stored_data_and_republishes_it(
    service_env: dict[str, str], redis_url: str
) -> None:
    assert run_fetcher("refresh-once", service_env).returncode == 0
    published = _current_document(redis_url, STATES_CURRENT)
    redis.Redis.from_url(redis_url).flushdb()  # Redis lost everything (restart, flush)

    dead = {**service_env, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    result = run_fetcher("refresh-once", dead)
    assert result.returncode == 0, result.stdout.decode()
    assert "fetch_rejected" in result.stdout.decode()
    # Rebuilt from PostgreSQL without the upstream: the same bytes as before.
    assert _current_document(redis_url, STATES_CURRENT) == published


def test_nothing_is_published_without_data_and_the_command_says_so(
    service_env: dict[str, str], redis_url: str
) -> None:
    dead = {**service_env, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    result = run_fetcher("refresh-once", dead)
    assert result.returncode == 1
    assert _current_document(redis_url, US_CURRENT) is None


def test_an_unmigrated_database_is_reported_not_written(
    empty_database_url: str, redis_url: str, upstream: Upstream
) -> None:
    env = clean_env(
        REDIS_URL=redis_url, DATABASE_URL=empty_database_url, UPSTREAM_BASE_URL=upstream.url
    )
    result = run_fetcher("refresh-once", env)
    assert result.returncode == 1
    assert "stats-fetcher migrate" in result.stdout.decode()
    assert run_fetcher("migrate", env).returncode == 0
    assert run_fetcher("refresh-once", env).returncode == 0


def test_the_service_refreshes_on_schedule_and_stops_on_sigterm(
    service_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    env = {**service_env, "FETCH_INTERVAL_SECONDS": "0.5", "LOG_LEVEL": "INFO"}
    process = spawn("fetcher", python_module("stats_fetcher", "run"), env, tmp_path)
    keys = RedisKeys()
    client = redis.Redis.from_url(redis_url)

    def snapshot() -> int:
        raw = client.get(keys.current_snapshot)
        return 0 if raw is None else int(raw)

    # A first refresh at start, then more on the schedule.
    wait_until(lambda: snapshot() >= 1, 20, what="the first snapshot")
    wait_until(lambda: snapshot() >= 3, 20, what="two scheduled refreshes")
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    assert "fetcher_stopped" in process.output()
    client.close()


def test_the_service_survives_a_database_outage_at_start(
    redis_url: str, upstream: Upstream, tmp_path: Path
) -> None:
    env = clean_env(
        REDIS_URL=redis_url,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/covid_stats",
        UPSTREAM_BASE_URL=upstream.url,
        FETCH_INTERVAL_SECONDS="0.2",
    )
    process = spawn("fetcher", python_module("stats_fetcher", "run"), env, tmp_path)
    wait_until(
        lambda: process.output().count("database_unavailable") >= 2,
        20,
        what="two failed refreshes",
    )
    assert process.proc.poll() is None  # still running, retrying
    process.stop()
