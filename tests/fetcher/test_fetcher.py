"""The stats-fetcher as real processes against the real replay upstream (misbehaving on
purpose where a test says so), PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
from typing import Any, cast

import asyncpg
import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from covid_stats_contract.documents import Document, DocumentBody
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.resources import RESOURCES, STATES_CURRENT, STATES_DAILY, US_CURRENT
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.http import SERVER_HEADERS, error_cache_control
from devstack.procs import free_port, wait_until
from devstack.servers import LocalPostgres, LocalRedis
from support import Fetcher, Upstream, check_error_body, clean_env, log_events, run_fetcher

TOKEN = "test-refresh-token"
# Rows inserted, updated or deleted in the database's tables so far (all backends).
WRITES = "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables"


def current_document(redis_url: str, name: str) -> Document | None:
    """Document ``name`` of the current snapshot, read as the api reads it."""

    async def read() -> Document | None:
        client = AsyncRedis.from_url(redis_url)
        try:
            return (await SnapshotStore(client, RedisKeys()).read(name)).document
        finally:
            await client.aclose()

    return asyncio.run(read())


def body(redis_url: str, name: str) -> bytes | None:
    doc = current_document(redis_url, name)
    return None if doc is None else doc.body


def snapshot_id(redis_url: str) -> int:
    raw = redis.Redis.from_url(redis_url).get(RedisKeys().current_snapshot)
    return 0 if raw is None else int(raw)


def query(database_url: str, sql: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def refresh(env: dict[str, str]) -> str:
    result = run_fetcher("refresh-once", env)
    output = str(result.stdout.decode() + result.stderr.decode())
    assert result.returncode == 0, output
    return output


# -- the pipeline --------------------------------------------------------------------------


def test_a_refresh_stores_all_five_resources_and_publishes_the_upstream_bytes(
    service_env: dict[str, str], redis_url: str, database_url: str, upstream: Upstream
) -> None:
    refresh(service_env)
    for resource in RESOURCES:
        upstream_json = upstream.get(resource.upstream_path("json"))
        records = json.loads(upstream_json.content)
        count = query(database_url, f"SELECT count(*) FROM {resource.table}")  # noqa: S608
        assert count == len(records), resource.key
        stored_bytes = query(
            database_url,
            "SELECT body_bytes FROM upstream_resources "  # noqa: S608 - a fixed key
            f"WHERE resource = '{resource.key}'",
        )
        assert stored_bytes == len(upstream_json.content), resource.key
        doc = current_document(redis_url, resource.document("json"))
        assert doc is not None, resource.key
        assert doc.body == upstream_json.content, resource.key
        assert doc.upstream_etag == upstream_json.headers["etag"]
        assert doc.fetched_at.endswith("Z")
        upstream_csv = upstream.get(resource.upstream_path("csv"))
        assert body(redis_url, resource.document("csv")) == upstream_csv.content, resource.key
    for state in ("ca", "NY", "vi"):
        for resource in (STATES_CURRENT, STATES_DAILY):
            path = f"/v1/states/{state.lower()}/{resource.per_state}.json"
            assert body(redis_url, resource.state_document(state)) == upstream.get(path).content


def test_a_refresh_of_an_unchanged_upstream_costs_conditional_requests_and_no_writes(
    published_env: dict[str, str], redis_url: str, upstream: Upstream
) -> None:
    """After a refresh (published_env: the template's, cloned), another one of the same
    upstream."""
    database_url = published_env["DATABASE_URL"]
    first = snapshot_id(redis_url)
    stored_at = query(database_url, "SELECT max(fetched_at) FROM upstream_resources")
    writes = query(database_url, WRITES)
    upstream.reset()

    refresh(published_env)
    counts = upstream.requests()
    assert sum(c["total"] for c in counts.values()) == len(RESOURCES)
    assert sum(c["conditional"] for c in counts.values()) == len(RESOURCES)
    assert sum(c["status"].get("304", 0) for c in counts.values()) == len(RESOURCES)
    assert snapshot_id(redis_url) == first  # no new snapshot
    assert query(database_url, "SELECT max(fetched_at) FROM upstream_resources") == stored_at
    # Backends flush their statistics when they disconnect: the fetcher has exited.
    assert query(database_url, WRITES) == writes


def test_the_csv_form_gives_the_same_documents_as_the_json_form(
    published_env: dict[str, str], redis_url: str
) -> None:
    """The documents of a refresh of the json form (published_env: the template's, cloned)
    against those of a full reload of the csv form."""
    from_json = {r.key: body(redis_url, r.document("json")) for r in RESOURCES}
    assert all(from_json.values())
    redis.Redis.from_url(redis_url).flushdb()
    query(published_env["DATABASE_URL"], "TRUNCATE upstream_resources")  # force a full reload
    refresh({**published_env, "UPSTREAM_FORMAT": "csv"})
    assert {r.key: body(redis_url, r.document("json")) for r in RESOURCES} == from_json


def test_a_changed_upstream_publishes_a_new_snapshot_and_keeps_the_old_one_for_a_while(
    published_env: dict[str, str], redis_url: str, upstream: Upstream
) -> None:
    first = snapshot_id(redis_url)
    assert first > 0
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["positive"] += 1
    upstream.fault("/v1/us/current.json", "body", body=changed)
    refresh({**published_env, "SNAPSHOT_GRACE_SECONDS": "120"})
    assert snapshot_id(redis_url) == first + 1
    assert json.loads(body(redis_url, "v1/us/current.json") or b"") == changed
    old_key = RedisKeys().document(str(first), "v1/us/current.json")
    assert 0 < redis.Redis.from_url(redis_url).ttl(old_key) <= 120


def snapshot_documents(redis_url: str, snapshot: int) -> dict[str, Document]:
    """Every document of snapshot ``snapshot``, by name, as Redis holds it."""
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys()
    try:
        members = cast(set[bytes], client.smembers(keys.snapshot_docs(str(snapshot))))
        documents = {}
        for name in (member.decode() for member in members):
            fields = cast(dict[bytes, bytes], client.hgetall(keys.document(str(snapshot), name)))
            documents[name] = Document.from_redis_hash(name, fields)
        return documents
    finally:
        client.close()


def test_a_publish_compresses_only_the_documents_it_changes(
    published_env: dict[str, str], redis_url: str, upstream: Upstream
) -> None:
    """gzip and Brotli of every document are most of a publish's CPU: a publish compresses the
    documents whose bytes changed and takes the others' forms over from the snapshot before
    (which changed: read from the two snapshots). Every form is what compressing gives."""
    first = snapshot_id(redis_url)
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["positive"] += 1
    upstream.fault("/v1/us/current.json", "body", body=changed)
    output = refresh({**published_env, "LOG_LEVEL": "INFO"})
    assert snapshot_id(redis_url) == first + 1
    before = snapshot_documents(redis_url, first)
    after = snapshot_documents(redis_url, first + 1)
    differ = {
        name
        for name, doc in after.items()
        if name not in before or before[name].content_hash != doc.content_hash
    }
    assert "v1/us/current.json" in differ
    assert len(differ) < len(after)
    published = log_events(output, "snapshot_published")
    assert [(line["compressed"], line["reused"]) for line in published] == [
        (len(differ), len(after) - len(differ))
    ]
    for name, doc in after.items():
        expected = DocumentBody(name, doc.body).compressed()
        assert (doc.gzip, doc.br) == (expected.gzip, expected.br), name


def test_the_same_body_again_costs_no_writes(
    published_env: dict[str, str], redis_url: str, upstream: Upstream
) -> None:
    """A 200 (no 304) whose bytes equal the stored ones: the content hash stops it."""
    database_url = published_env["DATABASE_URL"]
    first = snapshot_id(redis_url)
    writes = query(database_url, WRITES)
    same = json.loads(upstream.get("/v1/states/daily.json").content)
    upstream.fault("/v1/states/daily.json", "body", body=same)  # same bytes, served as a 200
    upstream.reset_requests()
    refresh(published_env)
    assert upstream.requests()["/v1/states/daily.json"]["status"] == {"200": 1}
    assert snapshot_id(redis_url) == first
    assert query(database_url, WRITES) == writes


def test_redis_is_rebuilt_from_postgres_without_the_upstream(
    published_env: dict[str, str], redis_url: str
) -> None:
    published = {r.key: body(redis_url, r.document("json")) for r in RESOURCES}
    assert all(published.values())
    redis.Redis.from_url(redis_url).flushdb()
    dead = {**published_env, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    output = refresh(dead)
    assert '"fetch_failed"' in output
    assert {r.key: body(redis_url, r.document("json")) for r in RESOURCES} == published


def test_nothing_is_published_without_any_data(service_env: dict[str, str], redis_url: str) -> None:
    dead = {**service_env, "UPSTREAM_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    result = run_fetcher("refresh-once", dead)
    assert result.returncode == 1
    assert snapshot_id(redis_url) == 0


@pytest.mark.recent
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
    assert run_fetcher("migrate", env).returncode == 0  # idempotent
    assert run_fetcher("refresh-once", env).returncode == 0


# -- faults: the last good snapshot stays, the failure is counted --------------------------


def _refreshed(fetcher: Fetcher, before: float) -> bool:
    return fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count") > before


def _trigger_and_wait(fetcher: Fetcher) -> None:
    before = fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count")
    response = httpx.post(f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202, response.text
    wait_until(lambda: _refreshed(fetcher, before), 30, what="the requested refresh")


def _states(upstream: Upstream) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(upstream.get("/v1/states/current.json").content)
    return records


FAULTS: list[tuple[str, dict[str, Any], str, str]] = [
    # (fault, params, expected outcome, expected reason)
    ("status", {"status": 500}, "failed", "http_500"),
    ("status", {"status": 404}, "failed", "http_404"),
    ("delay", {"seconds": 5}, "failed", "timeout"),
    ("truncate", {}, "failed", "truncated"),
    ("schema", {}, "rejected", "schema"),
    ("empty", {}, "rejected", "empty"),
    ("content_type", {}, "failed", "content_type"),
    ("not_modified", {}, "not_modified", ""),
]


@pytest.mark.recent
def test_every_fault_keeps_the_last_good_snapshot_and_moves_the_failure_metric(
    service_env: dict[str, str],
    redis_url: str,
    upstream: Upstream,
    fetcher_factory: Any,
    api_factory: Any,
    subtests: pytest.Subtests,
) -> None:
    env = {
        **service_env,
        "REFRESH_TOKEN": TOKEN,
        "UPSTREAM_TIMEOUT_SECONDS": "0.5",
        "FETCH_INTERVAL_SECONDS": "3600",
    }
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(lambda: snapshot_id(redis_url) > 0, 30, what="the first snapshot")
    for resource in RESOURCES:  # the size of each body read (headroom to UPSTREAM_MAX_BYTES)
        size = len(upstream.get(resource.upstream_path("json")).content)
        gauge = "covid_stats_fetcher_upstream_body_bytes"
        assert fetcher.metric(gauge, resource=resource.key) == size, resource.key
    api = api_factory(service_env)
    good = httpx.get(f"{api}/v1/states/current.json").content
    assert good == upstream.get("/v1/states/current.json").content
    path = "/v1/states/current.json"
    records = _states(upstream)
    negative = [dict(records[0], positive=-1), *records[1:]]
    future = [dict(records[0], date=29991231), *records[1:]]
    cases = [
        *FAULTS,
        ("body", {"body": negative}, "rejected", "schema"),
        ("body", {"body": future}, "rejected", "future_date"),
        ("body", {"body": records[:10]}, "rejected", "fewer_jurisdictions"),
        ("body", {"body": records + records[:1]}, "rejected", "duplicate_keys"),
    ]
    for fault, params, outcome, reason in cases:
        with subtests.test(msg=f"{fault} {params if fault != 'body' else reason}"):
            upstream.reset()
            upstream.fault(path, fault, **params)
            labels = {"resource": "states/current"}
            outcomes_before = fetcher.metric(
                "covid_stats_fetcher_fetches_total", outcome=outcome, **labels
            )
            errors = "covid_stats_fetcher_fetch_errors_total"
            errors_before = fetcher.metric(errors, reason=reason, **labels)
            _trigger_and_wait(fetcher)
            assert (
                fetcher.metric("covid_stats_fetcher_fetches_total", outcome=outcome, **labels)
                == outcomes_before + 1
            )
            if reason:
                assert (
                    fetcher.metric(
                        "covid_stats_fetcher_fetch_errors_total", reason=reason, **labels
                    )
                    == errors_before + 1
                )
            assert httpx.get(f"{api}/v1/states/current.json").content == good
            # The other resources were refreshed as usual: each fails on its own.
            assert (
                fetcher.metric(
                    "covid_stats_fetcher_fetches_total", resource="us/current", outcome="failed"
                )
                == 0
            )


@pytest.mark.recent
def test_transient_errors_are_retried(
    service_env: dict[str, str], redis_url: str, upstream: Upstream
) -> None:
    upstream.fault("/v1/us/daily.json", "status", status=503, times=2)
    output = refresh({**service_env, "UPSTREAM_RETRIES": "2"})
    assert '"fetch_failed"' not in output
    assert upstream.requests()["/v1/us/daily.json"]["total"] == 3
    assert body(redis_url, "v1/us/daily.json") == upstream.get("/v1/us/daily.json").content


# -- the service: schedule, control, outages, replicas --------------------------------------


def test_post_refresh_needs_the_bearer_token(
    published_env: dict[str, str], fetcher_factory: Any
) -> None:
    fetcher: Fetcher = fetcher_factory({**published_env, "REFRESH_TOKEN": TOKEN})
    url = f"{fetcher.url}/refresh"
    assert httpx.post(url).status_code == 401
    wrong = httpx.post(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    check_error_body(wrong.content, 401, "unauthorized")
    assert TOKEN not in wrong.text
    assert httpx.post(url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    _trigger_and_wait(fetcher)
    off: Fetcher = fetcher_factory(published_env, name="no-token", token=False)
    disabled = httpx.post(f"{off.url}/refresh", headers={"Authorization": "Bearer x"})
    assert disabled.status_code == 403
    check_error_body(disabled.content, 403, "disabled")
    assert TOKEN not in fetcher.process.output()


def test_the_fetchers_port_answers_errors_in_the_shared_shape(
    published_env: dict[str, str], fetcher_factory: Any
) -> None:
    """Unknown paths and wrong methods too: the api's error shape (one renderer, in the
    runtime library), and the headers every answer of the project carries."""
    fetcher: Fetcher = fetcher_factory(published_env)
    unknown = httpx.get(f"{fetcher.url}/nope")
    assert unknown.status_code == 404
    assert "/nope" in check_error_body(unknown.content, 404, "not_found").message
    wrong_method = httpx.get(f"{fetcher.url}/refresh")
    assert wrong_method.status_code == 405
    check_error_body(wrong_method.content, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["allow"]
    # A trailing slash: no redirect built from Host, an unknown path.
    slashed = httpx.get(f"{fetcher.url}/healthz/", headers={"Host": "evil.example"})
    assert slashed.status_code == 404
    assert "location" not in slashed.headers
    check_error_body(slashed.content, 404, "not_found")
    for answer in (unknown, wrong_method, slashed, httpx.get(f"{fetcher.url}/healthz")):
        assert "server" not in answer.headers
        for name, value in SERVER_HEADERS:
            assert answer.headers[name] == value
        if answer.status_code >= 400:  # how long each error may be cached
            expected = error_cache_control(answer.status_code).decode()
            assert answer.headers["cache-control"] == expected


@pytest.mark.recent
def test_the_service_refreshes_on_schedule_serves_metrics_and_stops_on_sigterm(
    service_env: dict[str, str], fetcher_factory: Any, upstream: Upstream
) -> None:
    env = {**service_env, "FETCH_INTERVAL_SECONDS": "0.5", "LOG_LEVEL": "INFO"}
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(
        lambda: fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count") >= 3,
        30,
        what="three scheduled refreshes",
    )
    assert fetcher.metric("covid_stats_fetcher_leader") == 1
    assert fetcher.metric("covid_stats_fetcher_snapshots_published_total") == 1  # then 304s
    # The staleness alerts compare the data age with the configured interval, and the
    # never-confirmed alert the process's age with it.
    interval = float(env["FETCH_INTERVAL_SECONDS"])
    assert fetcher.metric("covid_stats_fetcher_fetch_interval_seconds") == interval
    assert fetcher.metric("process_start_time_seconds") > 0
    assert fetcher.metric("covid_stats_fetcher_data_age_seconds") < 30
    assert fetcher.ready() == {"status": "ready", "leader": True, "redis": "ok", "postgres": "ok"}
    fetcher.process.proc.send_signal(signal.SIGTERM)
    assert fetcher.process.proc.wait(timeout=30) == 0
    assert '"fetcher_stopped"' in fetcher.process.output()


@pytest.mark.recent
def test_sigterm_during_a_refresh_lets_it_finish(
    service_env: dict[str, str], redis_url: str, fetcher_factory: Any, upstream: Upstream
) -> None:
    upstream.fault("/v1/states/daily.json", "delay", seconds=2)
    fetcher: Fetcher = fetcher_factory({**service_env, "UPSTREAM_TIMEOUT_SECONDS": "10"})
    wait_until(
        lambda: upstream.requests().get("/v1/states/daily.json", {}).get("total", 0) >= 1,
        20,
        what="the refresh to be in flight",
    )
    fetcher.process.proc.send_signal(signal.SIGTERM)
    assert fetcher.process.proc.wait(timeout=30) == 0
    assert snapshot_id(redis_url) == 1  # the refresh finished and published
    assert body(redis_url, "v1/states/daily.json") is not None


def test_sigterm_past_the_grace_period_abandons_the_refresh_cleanly(
    published_env: dict[str, str], redis_url: str, fetcher_factory: Any, upstream: Upstream
) -> None:
    assert snapshot_id(redis_url) == 1  # published_env: the template's refresh, cloned
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["death"] += 7
    upstream.fault("/v1/us/current.json", "body", body=changed)
    upstream.fault("/v1/states/daily.json", "delay", seconds=20)
    env = {**published_env, "UPSTREAM_TIMEOUT_SECONDS": "30", "SHUTDOWN_GRACE_SECONDS": "0.5"}
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(
        lambda: upstream.requests().get("/v1/states/daily.json", {}).get("total", 0) >= 1,
        20,
        what="the refresh to be in flight",
    )
    fetcher.process.proc.send_signal(signal.SIGTERM)
    assert fetcher.process.proc.wait(timeout=30) == 0
    assert '"refresh_abandoned"' in fetcher.process.output()
    assert snapshot_id(redis_url) == 1  # the previous snapshot is still the current one
    assert json.loads(body(redis_url, "v1/us/current.json") or b"") != changed


@pytest.mark.recent
def test_a_flushed_redis_is_rebuilt_by_the_running_fetcher_without_the_upstream(
    service_env: dict[str, str], redis_url: str, fetcher_factory: Any, upstream: Upstream
) -> None:
    env = {**service_env, "REDIS_CHECK_INTERVAL_SECONDS": "0.2", "FETCH_INTERVAL_SECONDS": "3600"}
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(lambda: _refreshed(fetcher, 0), 30, what="the first refresh")
    published = body(redis_url, "v1/states/daily.json")
    assert published is not None
    upstream.reset()
    redis.Redis.from_url(redis_url).flushdb()
    wait_until(lambda: body(redis_url, "v1/states/daily.json") is not None, 20, what="the rebuild")
    assert body(redis_url, "v1/states/daily.json") == published
    assert upstream.requests() == {}


@pytest.mark.recent
def test_redis_down_during_a_publish_then_back_empty(
    service_env: dict[str, str],
    private_redis: LocalRedis,
    fetcher_factory: Any,
    upstream: Upstream,
) -> None:
    env = {
        **service_env,
        "REDIS_URL": private_redis.url,
        "FETCH_INTERVAL_SECONDS": "0.3",
        "REDIS_CHECK_INTERVAL_SECONDS": "0.2",
        "LEADER_LEASE_SECONDS": "1",
        "UPSTREAM_TIMEOUT_SECONDS": "1",
    }
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(lambda: snapshot_id(private_redis.url) > 0, 30, what="the first snapshot")
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["positive"] += 5
    private_redis.kill()
    upstream.fault("/v1/us/current.json", "body", body=changed)
    wait_until(
        lambda: fetcher.metric("covid_stats_fetcher_leader") == 0, 20, what="the lease to be lost"
    )
    assert fetcher.process.proc.poll() is None  # degraded, not dead
    private_redis.start()  # back, and empty
    wait_until(
        lambda: json.loads(body(private_redis.url, US_CURRENT.document()) or b"null") == changed,
        30,
        what="the new data to be published after Redis came back",
    )
    assert fetcher.ready()["redis"] == "ok"


@pytest.mark.recent
def test_postgres_down_during_an_upsert_then_back(
    service_env: dict[str, str],
    redis_url: str,
    private_postgres: LocalPostgres,
    fetcher_factory: Any,
    api_factory: Any,
    upstream: Upstream,
) -> None:
    env = {
        **service_env,
        "DATABASE_URL": private_postgres.url,
        "FETCH_INTERVAL_SECONDS": "0.3",
        "UPSTREAM_TIMEOUT_SECONDS": "1",
    }
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(lambda: snapshot_id(redis_url) > 0, 30, what="the first snapshot")
    api = api_factory(env)
    before = httpx.get(f"{api}/v1/us/current.json").content
    private_postgres.kill()
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["death"] += 3
    upstream.fault("/v1/us/current.json", "body", body=changed)
    wait_until(
        lambda: '"database_unavailable"' in fetcher.process.output(), 20, what="a failed refresh"
    )
    assert httpx.get(f"{api}/v1/us/current.json").content == before  # still served
    assert fetcher.ready()["postgres"] == "down"
    private_postgres.start()
    wait_until(
        lambda: json.loads(httpx.get(f"{api}/v1/us/current.json").content) == changed,
        30,
        what="the new data once PostgreSQL is back",
    )


def test_two_replicas_one_refreshes_and_the_other_takes_over_when_it_dies(
    published_env: dict[str, str], redis_url: str, fetcher_factory: Any
) -> None:
    lease = 1.0
    env = {**published_env, "LEADER_LEASE_SECONDS": str(lease), "FETCH_INTERVAL_SECONDS": "0.3"}
    first: Fetcher = fetcher_factory(env, name="first")
    wait_until(first.is_leader, 10, what="the first replica to lead")
    second: Fetcher = fetcher_factory(env, name="second")
    wait_until(
        lambda: first.metric("covid_stats_fetcher_refresh_duration_seconds_count") >= 3,
        20,
        what="the leader's refreshes",
    )
    assert not second.is_leader()
    assert second.metric("covid_stats_fetcher_refresh_duration_seconds_count") == 0
    assert second.metric("covid_stats_fetcher_fetches_total") == 0

    published = snapshot_id(redis_url)
    first.process.proc.send_signal(signal.SIGKILL)  # dies without releasing its lease
    first.process.proc.wait(timeout=10)
    wait_until(second.is_leader, 2 * lease + 1, what="the second replica to take over")
    wait_until(
        lambda: second.metric("covid_stats_fetcher_refresh_duration_seconds_count") >= 1,
        10,
        what="the new leader to refresh",
    )
    assert snapshot_id(redis_url) >= published


def test_a_stale_leader_cannot_publish(redis_url: str) -> None:
    """The fencing check: a publisher whose lease value is no longer current is refused."""

    async def scenario() -> None:
        from redis.exceptions import ResponseError

        from covid_stats_contract.documents import DocumentBody

        client = AsyncRedis.from_url(redis_url)
        keys = RedisKeys()
        store = SnapshotStore(client, keys)
        await client.set(keys.leader, "2:new-leader")
        good = await store.publish([DocumentBody("a", b"good")], fence="2:new-leader")
        with pytest.raises(ResponseError, match="FENCED"):
            await store.publish([DocumentBody("a", b"stale")], fence="1:old-leader")
        found = await store.read("a")
        assert found.snapshot_id == good
        assert found.document is not None
        assert found.document.body == b"good"
        await client.aclose()

    asyncio.run(scenario())


def test_refresh_once_refuses_while_a_running_fetcher_leads(
    published_env: dict[str, str], fetcher_factory: Any
) -> None:
    fetcher: Fetcher = fetcher_factory(published_env)
    wait_until(fetcher.is_leader, 10, what="the fetcher to lead")
    assert run_fetcher("refresh-once", published_env).returncode == 2


@pytest.mark.recent
def test_the_fetcher_keeps_running_while_postgres_is_unreachable_at_start(
    redis_url: str, upstream: Upstream, fetcher_factory: Any
) -> None:
    env = clean_env(
        REDIS_URL=redis_url,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/covid_stats",
        UPSTREAM_BASE_URL=upstream.url,
        FETCH_INTERVAL_SECONDS="0.2",
    )
    fetcher: Fetcher = fetcher_factory(env)
    wait_until(
        lambda: fetcher.process.output().count('"database_unavailable"') >= 2,
        20,
        what="two failed refreshes",
    )
    assert fetcher.process.proc.poll() is None
    ready = httpx.get(f"{fetcher.url}/readyz")
    assert ready.status_code == 503
    assert fetcher.ready()["postgres"] == "down"
    assert httpx.get(f"{fetcher.url}/healthz").status_code == 200


def test_the_fetchers_http_clients_share_one_tls_context() -> None:
    """The upstream's, the purges' and the webhooks' clients (``stores.http_client``) share
    one TLS context, built once per process: each build loads the CA bundle again (20 to 30 ms
    of CPU), in every process the fetcher starts. Nothing connects here."""
    from pydantic import HttpUrl

    from stats_fetcher.config import Settings
    from stats_fetcher.service import FetcherService
    from stats_fetcher.stores import tls_context

    nowhere = f"127.0.0.1:{free_port()}"
    service = FetcherService(
        Settings(
            redis_url=f"redis://{nowhere}/0",
            database_url=f"postgresql://postgres@{nowhere}/covid_stats",
            upstream_base_url=HttpUrl(f"https://{nowhere}"),
        )
    )
    clients = [service.stores.http, service.purger.http, service.webhooks.http]
    contexts = [client._transport._pool._ssl_context for client in clients]  # type: ignore[attr-defined]
    assert all(context is tls_context() for context in contexts)
    assert tls_context().verify_mode == ssl.CERT_REQUIRED


def test_the_fetcher_loads_its_modules_without_collections_and_freezes_them() -> None:
    """``python -m stats_fetcher`` imports its modules with the cyclic collector off (no full
    collection, about 20 others fewer: some 15 % of every ``refresh-once``'s start-up), then
    freezes what they made and turns the collector on for the command."""
    script = (
        "import gc, runpy\n"
        "runpy.run_module('stats_fetcher.__main__', run_name='loaded')\n"
        "stats = gc.get_stats()\n"
        "print(stats[1]['collections'], stats[2]['collections'], gc.isenabled(),"
        " gc.get_freeze_count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    middle, full, enabled, frozen = done.stdout.split()
    assert (full, enabled) == ("0", "True")
    assert int(middle) <= 2
    assert int(frozen) > 10_000
