"""The two-tier cache and the fast path, under real gunicorn (2 workers) with real Redis and
PostgreSQL: memory first, Redis behind it, one fill per question, gzip from the fetcher."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from covid_stats_contract.keys import RedisKeys
from devstack.procs import wait_until
from devstack.servers import LocalPostgres, LocalRedis
from support import Upstream, run_fetcher, scratch_dir

ApiFactory = Callable[[dict[str, str]], str]
HOT = ["covid-stats", "v1/us/current.json", "v1/states/current.json", "v1/states/ca/daily.csv"]


def _warm(api: str, paths: list[str], rounds: int = 20) -> None:
    """Request each path often enough, on fresh connections, for both workers to keep it."""
    for _ in range(rounds):
        for path in paths:
            assert httpx.get(f"{api}/{path}").status_code == 200


def test_hot_documents_answer_from_memory_while_redis_is_down(
    service_env: dict[str, str], private_redis: LocalRedis, api_factory: ApiFactory
) -> None:
    env = {**service_env, "REDIS_URL": private_redis.url}
    assert run_fetcher("refresh-once", env).returncode == 0
    api = api_factory(env)
    _warm(api, HOT)
    before = {path: httpx.get(f"{api}/{path}") for path in HOT}
    private_redis.kill()
    for _ in range(10):
        for path, response in before.items():
            now = httpx.get(f"{api}/{path}")
            assert now.status_code == 200
            assert now.content == response.content
            assert now.headers["x-data-source"] == "cache"
            etag = response.headers["etag"]
            assert httpx.get(f"{api}/{path}", headers={"If-None-Match": etag}).status_code == 304
    # Other reads fall back to PostgreSQL.
    fallback = httpx.get(f"{api}/v1/states/daily.json?states=vt&lastdays=3")
    assert fallback.status_code == 200
    assert fallback.headers["x-data-source"] == "database"


def test_a_new_snapshot_reaches_every_worker(
    service_env: dict[str, str], redis_url: str, upstream: Upstream, api_factory: ApiFactory
) -> None:
    assert run_fetcher("refresh-once", service_env).returncode == 0
    api = api_factory(service_env)
    _warm(api, ["v1/us/current.json"])
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["positive"] += 1
    upstream.fault("/v1/us/current.json", "body", body=changed)
    assert run_fetcher("refresh-once", service_env).returncode == 0
    published = time.monotonic()

    def all_new() -> bool:  # 20 requests on fresh connections: both workers answer
        return all(
            json.loads(httpx.get(f"{api}/v1/us/current.json").content) == changed for _ in range(20)
        )

    wait_until(all_new, 10, what="every worker to serve the new snapshot")
    print(f"new snapshot served by every worker {time.monotonic() - published:.2f}s after publish")


def test_gzip_bodies_are_the_fetchers_and_served_when_accepted(
    service_env: dict[str, str], redis_url: str, api_factory: ApiFactory
) -> None:
    assert run_fetcher("refresh-once", service_env).returncode == 0
    api = api_factory(service_env)
    # A cold worker renders /covid-stats around the document without compressing it (no
    # per-request compression); warm workers serve its gzip body from memory.
    _warm(api, ["covid-stats"])
    client = redis.Redis.from_url(redis_url)
    raw_snapshot = client.get(RedisKeys().current_snapshot)
    assert isinstance(raw_snapshot, bytes)
    snapshot = raw_snapshot.decode()
    for path in ["v1/states/current.json", "v1/states/daily.csv", "covid-stats"]:
        for _ in range(3):  # cold worker (Redis), then warm ones (memory)
            with httpx.stream("GET", f"{api}/{path}", headers={"Accept-Encoding": "gzip"}) as r:
                raw = b"".join(r.iter_raw())
                assert r.headers["content-encoding"] == "gzip"
                assert "Accept-Encoding" in r.headers["vary"]
            plain = httpx.get(f"{api}/{path}", headers={"Accept-Encoding": "identity"})
            assert "content-encoding" not in plain.headers
            assert gzip.decompress(raw) == plain.content
            if path != "covid-stats":  # the fetcher's own bytes, compressed once
                stored = client.hget(RedisKeys().document(snapshot, path), "gzip")
                assert raw == stored


@pytest.fixture
def logging_postgres() -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL that logs every statement it executes."""
    from conftest import migrate

    with (
        scratch_dir("test-pg-log") as d,
        LocalPostgres(Path(d), settings={"log_min_duration_statement": "0"}) as server,
    ):
        migrate(server.url)
        yield server


def _executions(log: Path, since: int, table: str) -> int:
    text = log.read_bytes()[since:].decode(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if "execute" in line and f"FROM {table}" in line and "record::text" in line
    )


async def _burst(url: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.get(url) for _ in range(count)))


def test_a_thousand_concurrent_misses_cost_one_postgres_query(
    service_env: dict[str, str], logging_postgres: LocalPostgres, api_factory: ApiFactory
) -> None:
    env = {**service_env, "DATABASE_URL": logging_postgres.url}
    assert run_fetcher("refresh-once", env).returncode == 0
    api = api_factory(env)
    url = f"{api}/v1/states/daily.json?states=tx,ok&lastdays=30&sort=-positive"
    since = logging_postgres.log_path.stat().st_size
    responses = asyncio.run(_burst(url, 1000))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert _executions(logging_postgres.log_path, since, "states_daily") == 1


def test_512_concurrent_connections_get_no_server_error(
    service_env: dict[str, str], api_factory: ApiFactory
) -> None:
    assert run_fetcher("refresh-once", service_env).returncode == 0
    api = api_factory(service_env)

    async def mixed() -> list[httpx.Response]:
        paths = [
            "v1/us/current.json",
            "v1/states/current.json",
            "v1/states/ny/daily.json",
            "v1/states/daily.json?states=ca&lastdays=7",
            "v1/us/daily.json?fields=date,positive",
            "v1/states/tx/derived.json",
            "covid-stats",
        ]
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(client.get(f"{api}/{paths[i % len(paths)]}") for i in range(512))
            )

    statuses = [r.status_code for r in asyncio.run(mixed())]
    assert [s for s in statuses if s >= 500] == []
    assert set(statuses) == {200}
