"""Faults under load: Redis or PostgreSQL dies, the api is stopped, reloaded or loses a
worker, the fetcher dies mid-refresh. Real servers and processes, and a load generator
(``load.Load``: concurrent keep-alive clients, every outcome recorded) running through each.

Every scenario that stops or kills a store has its own Redis and PostgreSQL
(``private_redis`` / ``private_postgres``; the session's published data copied into them,
``seeded_env``, where it does not test the first refresh); those that signal the api take a
clone of the session's published data (``clone_env``, tests/stacks.py). Each reports, in the
terminal summary, the requests sent, the failed ones (defined per scenario, in its docstring
and next to the figure) and the time to recover: from the end of the fault (the server back,
the worker replaced) to the first fully correct answer of the kind the fault affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import pytest
import redis

from covid_stats_contract.keys import RedisKeys
from devstack.load import Load, Outcome, Unique, body_digest, in_flight_at
from devstack.procs import wait_until
from devstack.servers import LocalPostgres, LocalRedis
from stacks import Template, cloned_env
from support import (
    ApiUrl,
    Fetcher,
    Process,
    Upstream,
    clean_env,
    metric_samples,
    receive_answer,
    run_fetcher,
    start_api,
    summary,
    warm_workers,
)

# Each test that applies load and counts failed requests, or times a drain, is marked load:
# under xdist no two loads run at once (tests/conftest.py).

ApiFactory = Callable[[dict[str, str]], ApiUrl]
FetcherFactory = Callable[..., Fetcher]
ApiProcessFactory = Callable[[dict[str, str]], tuple[Process, ApiUrl]]

TOKEN = "test-refresh-token"
US = "/v1/us/current.json"
# Published documents: after one read each worker answers them from memory (the hot tier).
HOT = [US, "/covid-stats", "/v1/states/current.json", "/v1/states/ny/daily.json"]
# Questions PostgreSQL answers, then cached in Redis per snapshot, and kept by each worker
# that answered them until the next publish (reads.recent).
QUERIES = [
    "/v1/states/daily.json?states=ca&lastdays=7",
    "/v1/us/daily.json?fields=date,positive&lastdays=30",
]
# A question no cache holds yet: a new one each time (``Unique`` numbers every request the
# load sends). The api keys a question by what it selects (reads.canonical: a lastdays beyond
# the data's span is the same question as none), so each selects other records or fields:
# lastdays within the span of every dataset the upstream serves, times a set of fields (150 x
# 255 questions before one comes again).
US_FIELDS = (
    "positive",
    "death",
    "negative",
    "hospitalizedCurrently",
    "totalTestResults",
    "positiveIncrease",
    "deathIncrease",
    "recovered",
)


def _uncached(n: int) -> str:
    mask = n // 150 % 255 + 1
    fields = [name for bit, name in enumerate(US_FIELDS) if mask >> bit & 1]
    return f"/v1/us/daily.json?lastdays={n % 150 + 1}&fields=date,{','.join(fields)}"


def _slow(n: int) -> str:
    sorts = ["", *(f"&sort={sign}{name}" for name in US_FIELDS for sign in ("", "-"))]
    return f"/v1/states/daily.json?lastdays={n % 150 + 1}{sorts[n // 150 % len(sorts)]}"


UNCACHED = Unique("uncached query", _uncached)
# An uncached question over most of the states/daily table (rendered in a thread): slow
# enough to be in flight when a signal comes (the env lifts QUERY_ANSWER_MAX_BYTES for it).
SLOW = Unique("slow query", _slow)


# The fetcher's and the api's settings in every scenario.
SETTINGS = {
    "UPSTREAM_RETRIES": "1",
    "UPSTREAM_RETRY_INITIAL_SECONDS": "0.05",
    "UPSTREAM_TIMEOUT_SECONDS": "2",
    "REFRESH_TOKEN": TOKEN,
    # The fetcher notices an empty Redis, and takes the lease back, within a second.
    "REDIS_CHECK_INTERVAL_SECONDS": "0.2",
    "LEADER_LEASE_SECONDS": "1",
    "FETCH_INTERVAL_SECONDS": "3600",
    # The drain on shutdown lasts at most one keep-alive period.
    "GUNICORN_KEEPALIVE_SECONDS": "2",
    # The slow query asks for most of states/daily: never refused for its size here.
    "QUERY_ANSWER_MAX_BYTES": str(2**30),
}


@pytest.fixture
def env(
    private_redis: LocalRedis, private_postgres: LocalPostgres, upstream: Upstream
) -> dict[str, str]:
    """The fetcher's and the api's environment, on this test's own servers (it stops or kills
    them), empty."""
    return clean_env(
        REDIS_URL=private_redis.url,
        DATABASE_URL=private_postgres.url,
        UPSTREAM_BASE_URL=upstream.url,
        **SETTINGS,
    )


@pytest.fixture
def seeded_env(env: dict[str, str], template: Template) -> dict[str, str]:
    """``env`` with the session upstream's data published on the test's own servers, as a
    ``refresh-once`` leaves it: the session's template copied into them (tests/stacks.py),
    in a second instead of a refresh's many."""
    template.copy_into(env["REDIS_URL"], env["DATABASE_URL"])
    return env


@pytest.fixture
def clone_env(
    template: Template, redis_server_url: str, upstream: Upstream
) -> Iterator[dict[str, str]]:
    """For the scenarios that signal the api and never stop a store: the session upstream's
    data published, a clone of the session's template on the session's servers (a database
    and a Redis database number of their own, tests/stacks.py), no servers of their own."""
    with cloned_env(template, redis_server_url, upstream, **SETTINGS) as cloned:
        yield cloned


def first_refresh(fetcher: Fetcher) -> None:
    """Wait until ``fetcher`` has finished its first refresh (over published stores and an
    unchanged upstream: conditional requests, no new snapshot)."""
    wait_until(
        lambda: fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count") >= 1,
        60,
        what="the fetcher's first refresh",
    )


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[ApiProcessFactory]:
    """Starts the api under gunicorn (2 workers); the test may signal it. Stopped after."""
    started: list[Process] = []

    def start(env: dict[str, str]) -> tuple[Process, ApiUrl]:
        process, base = start_api(env, tmp_path)
        started.append(process)
        return process, base

    yield start
    for process in started:
        process.stop()


def publish(env: dict[str, str]) -> None:
    """One refresh, by ``stats-fetcher refresh-once``."""
    result = run_fetcher("refresh-once", env)
    assert result.returncode == 0, result.stdout.decode()


def snapshot_id(redis_url: str) -> str | None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        raw = client.get(RedisKeys().current_snapshot)
    except redis.RedisError:
        return None
    finally:
        client.close()
    return None if raw is None else str(raw)


def warm(api: ApiUrl, paths: Sequence[str]) -> dict[str, str]:
    """``warm_workers``: every worker keeps each path; returns each path's body digest."""
    return {path: body_digest(body) for path, body in warm_workers(api, paths).items()}


def workers(master: Process) -> set[int]:
    """The pids of the gunicorn master's workers, a dead one included until the master has
    reaped it (and run its child_exit hook: the metrics drop its gauges)."""
    return {child.pid for child in psutil.Process(master.proc.pid).children()}


def metrics(api: ApiUrl) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return metric_samples(httpx.get(api.metrics).text)


def serving_workers(api: ApiUrl, pool_size: int) -> float:
    """How many live workers serve, from ``covid_stats_api_redis_pool_connections{state=max}``
    (a livesum gauge each worker sets once its app has started; a dead worker's is dropped)."""
    return (
        sum(
            value
            for (sample, labels), value in metrics(api).items()
            if sample == "covid_stats_api_redis_pool_connections" and dict(labels)["state"] == "max"
        )
        / pool_size
    )


def data_requests_counted(api: ApiUrl) -> float:
    """``covid_stats_api_requests_total`` over the data routes (not the probes)."""
    return sum(
        value
        for (sample, labels), value in metrics(api).items()
        if sample == "covid_stats_api_requests_total"
        and dict(labels)["route"] not in ("/healthz", "/readyz")
    )


def describe(outcomes: Sequence[Outcome]) -> str:
    """``{kind: {status or error: count}}``, for assertion messages."""
    counts: dict[str, dict[str, int]] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else str(o.error)
        per_kind = counts.setdefault(o.kind, {})
        per_kind[key] = per_kind.get(key, 0) + 1
    return json.dumps(counts, sort_keys=True)


def between(outcomes: Sequence[Outcome], start: float, end: float) -> list[Outcome]:
    """The requests started in [start, end)."""
    return [o for o in outcomes if start <= o.started < end]


def changed_us_current(upstream: Upstream) -> tuple[list[dict[str, Any]], str]:
    """A new US current record served by the upstream from now on, and its body's digest."""
    records: list[dict[str, Any]] = json.loads(upstream.get(US).content)
    records[0]["positive"] += 1000
    upstream.fault(US, "body", body=records)
    return records, body_digest(upstream.get(US).content)


def recent_all(load: Load, kind: str, predicate: Callable[[Outcome], bool], count: int) -> bool:
    """Whether the ``count`` latest answers of ``kind`` all satisfy ``predicate``."""
    recent = [o for o in load.outcomes() if o.kind == kind][-count:]
    return len(recent) == count and all(predicate(o) for o in recent)


def settled(outcomes: Sequence[Outcome], kind: str, good: Callable[[Outcome], bool]) -> float:
    """When ``kind`` was last answered wrongly (after which every answer was right)."""
    return max((o.finished for o in outcomes if o.kind == kind and not good(o)), default=-math.inf)


def _answered_from_postgres(url: str) -> bool:
    response = httpx.get(url, timeout=10)
    return response.status_code == 200 and response.headers["x-data-source"] == "database"


def stale(load: Load) -> str:
    return describe(load.outcomes()[-200:])


# -- 1. Redis dies during load -------------------------------------------------------------


@pytest.mark.load
def test_redis_dies_under_load_then_comes_back_empty(
    seeded_env: dict[str, str],
    private_redis: LocalRedis,
    upstream: Upstream,
    fetcher_factory: FetcherFactory,
    api_factory: ApiFactory,
) -> None:
    """Hot documents keep answering 200 from memory, other reads come from PostgreSQL; back
    and empty, Redis gets a snapshot again from PostgreSQL and the fetcher leads again, with
    no restart. The upstream changes during the outage: the new data must reach every worker.

    Failed: a request without a complete 2xx answer, other than those in flight at the kill.
    Recovered: the new snapshot served (the fetcher led again, published it from PostgreSQL,
    the workers picked it up)."""
    fetcher = fetcher_factory(seeded_env)
    first_refresh(fetcher)
    api = api_factory(seeded_env)
    before = warm(api, HOT + QUERIES)
    with Load(api, HOT + QUERIES, clients=16) as load:
        load.wait_requests(500, 60)
        killing = time.monotonic()
        private_redis.kill()
        # Requests sent while the kill was under way (the load runs in threads of this
        # process) may have been answered by the store: in flight at the kill, excused.
        killed = time.monotonic()
        _, new_digest = changed_us_current(upstream)  # published once Redis is back
        load.wait_requests(1500, 60, since=killed)
        # A question no worker holds is answered by PostgreSQL.
        asked = iter(range(10_000))
        wait_until(
            lambda: _answered_from_postgres(f"{api}{_uncached(next(asked))}"),
            30,
            what="a query answered from PostgreSQL",
        )
        ready = httpx.get(f"{api}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "redis": "down",
            "postgres": "ok",
            "memory": "ok",
        }
        assert httpx.get(f"{api}/healthz").status_code == 200
        assert fetcher.ready()["redis"] == "down"
        back = time.monotonic()
        private_redis.start()  # empty
        first_new = load.wait_for(
            lambda o: o.kind == US and o.digest == new_digest,
            60,
            since=back,
            what="the new snapshot to be served",
        )
        wait_until(
            lambda: recent_all(load, US, lambda o: o.digest == new_digest, 40),
            30,
            what=f"every worker to serve the new snapshot: {stale(load)}",
        )
        cached = load.wait_for(
            lambda o: o.kind in QUERIES and o.ok and o.source == "cache",
            30,
            since=back,
            what="a query answered from Redis again",
        )
        # Waited for, not asserted at one instant: with this test's one-second lease, a
        # fetcher starved of CPU by the load can miss a renewal and hold no lease for a
        # third of a second before it takes it again.
        wait_until(
            lambda: fetcher.ready()["redis"] == "ok" and fetcher.is_leader(),
            10,
            what="the fetcher to reach Redis and lead again",
        )
    outcomes = load.outcomes()

    excused = in_flight_at(outcomes, killing, killed)
    failed = [o for o in outcomes if not o.ok and o not in excused]
    assert failed == [], describe(failed)
    during = [o for o in between(outcomes, killed, back) if o not in excused]
    hot = [o for o in during if o.kind in HOT]
    assert hot, "no hot document was requested during the outage"
    assert all(o.status == 200 and o.source == "cache" for o in hot), describe(hot)
    assert all(o.digest == before[o.kind] for o in hot)
    queries = [o for o in during if o.kind in QUERIES]
    assert queries, "no query was sent during the outage"
    # Every worker answered them before the kill: from its memory, the last snapshot's bytes.
    assert all(o.status == 200 and o.source == "cache" for o in queries), describe(queries)
    assert all(o.digest == before[o.kind] for o in queries)
    after_back = [o for o in outcomes if o.started >= back]
    every_worker = settled(after_back, US, lambda o: o.digest == new_digest)
    summary(
        f"redis outage: {len(outcomes)} requests, {len(failed)} failed (no complete 2xx, "
        f"beyond the {len(excused)} in flight at the kill, of which "
        f"{sum(1 for o in excused if not o.ok)} failed); {len(during)} during the "
        f"{back - killed:.1f} s outage, hot documents and asked queries from memory; "
        f"Redis back empty -> new snapshot served after {first_new.finished - back:.2f} s, "
        f"by every worker after {max(every_worker, first_new.finished) - back:.2f} s, "
        f"queries cached in Redis again after {cached.finished - back:.2f} s"
    )


@pytest.mark.load
def test_a_snapshot_id_used_again_after_redis_lost_its_data_still_reaches_every_worker(
    seeded_env: dict[str, str],
    private_redis: LocalRedis,
    upstream: Upstream,
    api_factory: ApiFactory,
) -> None:
    """Snapshot ids count up from 1 in an empty Redis: after a restart new data may come
    under the id the workers already hold. Found by the Redis scenario: the workers kept
    serving the old documents from memory until the next snapshot."""
    api = api_factory(seeded_env)
    warm(api, HOT)
    held = snapshot_id(private_redis.url)
    private_redis.kill()
    private_redis.start()  # empty
    records, _ = changed_us_current(upstream)
    publish(seeded_env)
    assert snapshot_id(private_redis.url) == held  # the same id, other data

    def every_worker_serves_the_new_data() -> bool:
        return all(httpx.get(f"{api}{US}").json() == records for _ in range(20))

    wait_until(every_worker_serves_the_new_data, 10, what="the new data in every worker")


# -- 2. PostgreSQL dies during load --------------------------------------------------------


@pytest.mark.load
def test_postgres_dies_under_load_then_comes_back(
    seeded_env: dict[str, str],
    private_postgres: LocalPostgres,
    private_redis: LocalRedis,
    upstream: Upstream,
    fetcher_factory: FetcherFactory,
    api_factory: ApiFactory,
) -> None:
    """Cached reads (hot documents, queries cached in Redis) are unaffected; uncached
    queries answer 503 with Retry-After; the fetcher keeps the last snapshot published, and
    publishes the upstream's change once PostgreSQL is back.

    Failed: a cached read without a complete 200, or an uncached query answered with
    anything but 200 before the kill / 503 with Retry-After during the outage / 200 after
    recovery; requests in flight at the kill excepted. Recovered: an uncached query answered
    200 again, and the upstream's change served."""
    seeded_env = {**seeded_env, "FETCH_INTERVAL_SECONDS": "0.5", "RETRY_AFTER_SECONDS": "7"}
    fetcher = fetcher_factory(seeded_env)
    first_refresh(fetcher)
    api = api_factory(seeded_env)
    before = warm(api, HOT + QUERIES)
    with Load(api, [*HOT, *QUERIES, UNCACHED], clients=16) as load:
        load.wait_requests(500, 60)
        killing = time.monotonic()
        private_postgres.kill()
        # Requests sent while the kill was under way (the load runs in threads of this
        # process) may have been answered by the store: in flight at the kill, excused.
        killed = time.monotonic()
        published = snapshot_id(private_redis.url)
        _, new_digest = changed_us_current(upstream)  # stored and published once PG is back
        load.wait_requests(1500, 60, since=killed)
        wait_until(
            lambda: '"database_unavailable"' in fetcher.process.output(),
            30,
            what="a refresh to fail on PostgreSQL",
        )
        assert fetcher.ready()["postgres"] == "down"
        assert fetcher.process.proc.poll() is None
        assert snapshot_id(private_redis.url) == published
        ready = httpx.get(f"{api}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "redis": "ok",
            "postgres": "down",
            "memory": "ok",
        }
        back = time.monotonic()
        private_postgres.start()
        answered = load.wait_for(
            lambda o: o.kind == UNCACHED.kind and o.status == 200,
            60,
            since=back,
            what="an uncached query answered again",
        )
        first_new = load.wait_for(
            lambda o: o.kind == US and o.digest == new_digest,
            60,
            since=back,
            what="the upstream's change to be published",
        )
        wait_until(
            lambda: recent_all(load, UNCACHED.kind, lambda o: o.status == 200, 20),
            30,
            what=f"uncached queries to be answered again: {stale(load)}",
        )
    outcomes = load.outcomes()

    excused = in_flight_at(outcomes, killing, killed)
    counted = [o for o in outcomes if o not in excused]
    cached = [o for o in counted if o.kind != UNCACHED.kind]
    uncached = [o for o in counted if o.kind == UNCACHED.kind]
    failed = [o for o in cached if o.status != 200]
    assert failed == [], describe(failed)
    # A question still in flight when PostgreSQL starts again may be answered either way
    # (refused, or answered once it is back), as those in flight at the kill are excused.
    settling = in_flight_at(uncached, back)
    during = [o for o in between(uncached, killed, back) if o not in settling]
    refused = [o for o in during if o.status == 503 and o.retry_after == "7"]
    # Before the kill, and after the first answer again, uncached queries are answered. Each
    # api worker reconnects to PostgreSQL by itself, and a keep-alive connection stays on one
    # worker: on each connection, recovery ends at its own first answer again (the other
    # worker may answer a few milliseconds later: a load as fast as this one's reaches it).
    answered_again: dict[float, float] = {}
    for o in sorted(uncached, key=lambda o: o.started):
        if o.started >= back and o.status == 200:
            answered_again.setdefault(o.connected, o.started)
    wrong = [o for o in uncached if o not in during + settling and o.status != 200]
    wrong = [
        o for o in wrong if not (back <= o.started < answered_again.get(o.connected, math.inf))
    ]
    assert set(during) - set(refused) == set(), describe([o for o in during if o not in refused])
    assert wrong == [], describe(wrong)
    assert refused, "no uncached query was sent during the outage"
    cached_during = between(cached, killed, back)
    assert all(o.source == "cache" for o in cached_during), describe(cached_during)
    assert all(o.digest == before[o.kind] for o in cached_during)
    summary(
        f"postgres outage: {len(outcomes)} requests, {len(failed) + len(wrong)} failed "
        f"(cached reads without a 200, uncached queries not answered 200 outside the outage, "
        f"beyond the {len(excused)} in flight at the kill, of which "
        f"{sum(1 for o in excused if not o.ok)} failed); during the {back - killed:.1f} s "
        f"outage {len(cached_during)} cached reads answered 200, {len(refused)} uncached "
        f"queries 503 + Retry-After; PostgreSQL back -> uncached queries answered after "
        f"{answered.finished - back:.2f} s, the fetcher's new snapshot served after "
        f"{first_new.finished - back:.2f} s"
    )


# -- 3. Restarts drop nothing --------------------------------------------------------------


@pytest.mark.load
def test_sigterm_to_the_master_under_load_drops_no_request(
    clone_env: dict[str, str], api_process: ApiProcessFactory
) -> None:
    """gunicorn's master gets SIGTERM while 16 keep-alive clients (and slow uncached
    queries) keep it busy: every request on a connection established before the signal
    gets its complete answer; connections opened after it may be refused; the workers exit
    by themselves, before the graceful timeout.

    Failed: a request whose connection was established before the signal and that got no
    complete 2xx/304 answer."""
    master, api = api_process({**clone_env, "GUNICORN_GRACEFUL_TIMEOUT_SECONDS": "30"})
    warm(api, HOT)
    with Load(api, [*HOT, SLOW], clients=16) as load:
        # About nine requests a client: each has gone round its five paths (a slow query
        # among them) at least once.
        load.wait_requests(150, 60)
        signalled = time.monotonic()
        master.proc.send_signal(signal.SIGTERM)
        code = master.proc.wait(timeout=60)
        stopped = time.monotonic()
        load.wait_requests(50, 30, since=stopped)
    outcomes = load.outcomes()

    assert code == 0, master.output()[-2000:]
    # The workers exited by themselves: at the graceful timeout the master kills them (a
    # worker whose app shutdown hung, waiting for its snapshot watcher, used to get there).
    assert stopped - signalled < 30
    before = [o for o in outcomes if o.connected < signalled]  # nan compares False
    failed = [o for o in before if not o.ok]
    assert failed == [], describe(failed)
    in_flight = in_flight_at(outcomes, signalled)
    assert any(o.kind == SLOW.kind for o in in_flight), "no slow query was in flight"
    answered_after = [o for o in before if o.finished > signalled]
    later = [o for o in outcomes if o not in before]
    summary(
        f"SIGTERM to the master: {len(outcomes)} requests, {len(failed)} failed (on a "
        f"connection established before the signal, no complete 2xx/304); "
        f"{len(in_flight)} in flight at the signal and {len(answered_after)} answered after "
        f"it all completed; the master exited 0 after {stopped - signalled:.2f} s; "
        f"{len(later)} later requests on new connections: {describe(later)}"
    )


@pytest.mark.load
def test_a_hup_reload_under_load_drops_no_request(
    clone_env: dict[str, str], api_process: ApiProcessFactory
) -> None:
    """``kill -HUP`` the master: new workers start, the old ones drain and exit.

    Failed: any request without a complete 2xx/304 answer. Recovered: every old worker gone
    and the new ones answering."""
    master, api = api_process({**clone_env, "REDIS_POOL_SIZE": "8"})
    warm(api, HOT)
    old = workers(master)
    assert len(old) == 2
    with Load(api, [*HOT, *QUERIES], clients=16) as load:
        load.wait_requests(500, 60)
        reloaded = time.monotonic()
        master.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: not workers(master) & old and len(workers(master)) == 2,
            60,
            what="the old workers to be replaced",
        )
        gone = time.monotonic()
        wait_until(lambda: serving_workers(api, 8) == 2, 30, what="the new workers to serve")
        swapped = time.monotonic()
        load.wait_requests(500, 60, since=swapped)
    outcomes = load.outcomes()

    failed = [o for o in outcomes if not o.ok]
    assert failed == [], describe(failed)
    assert master.proc.poll() is None
    during = between(outcomes, reloaded, swapped)
    slowest = max((o.finished - o.started for o in during), default=0.0)
    summary(
        f"HUP reload: {len(outcomes)} requests, {len(failed)} failed (no complete 2xx/304); "
        f"old workers gone after {gone - reloaded:.2f} s, both new ones serving after "
        f"{swapped - reloaded:.2f} s; {len(during)} requests meanwhile, the slowest "
        f"{slowest * 1000:.0f} ms"
    )


@pytest.mark.load
def test_a_sigkilled_worker_is_replaced_and_the_metrics_stay_consistent(
    clone_env: dict[str, str], api_process: ApiProcessFactory
) -> None:
    """One worker is SIGKILLed: only the requests it had in hand are lost, the master
    starts another, and /metrics still adds up: the dead worker's requests stay counted,
    its gauges are gone.

    Failed: a request without a complete 2xx/304 answer, other than those in flight on the
    dead worker (started before it was gone, finished after the kill). Recovered: the new
    worker serving (its gauges in /metrics)."""
    master, api = api_process({**clone_env, "REDIS_POOL_SIZE": "8"})
    warm(api, HOT)
    warmed = 20 * len(HOT)
    victim, survivor = sorted(workers(master))
    counted_before = data_requests_counted(api)
    assert counted_before == warmed
    with Load(api, [*HOT, *QUERIES], clients=16) as load:
        load.wait_requests(500, 60)
        killed = time.monotonic()
        psutil.Process(victim).kill()
        wait_until(lambda: victim not in workers(master), 10, what="the worker to be reaped")
        dead = time.monotonic()
        wait_until(lambda: len(workers(master)) == 2, 30, what="a new worker")
        # The dead worker's gauges dropped, the new worker's there once it serves.
        wait_until(lambda: serving_workers(api, 8) == 2, 30, what="the new worker to serve")
        replaced = time.monotonic()
        load.wait_requests(500, 60, since=replaced)
    outcomes = load.outcomes()

    assert survivor in workers(master)
    lost = [o for o in outcomes if not o.ok]
    excused = in_flight_at(lost, killed, dead)
    failed = [o for o in lost if o not in excused]
    assert failed == [], describe(failed)
    assert len(excused) <= 16  # at most one request per client
    # Every answered request is counted once, whichever worker answered it, the dead one
    # included; only a request the worker had in hand when it died may be off.
    answered = sum(1 for o in outcomes if o.ok) + warmed
    counted = data_requests_counted(api)
    assert answered - 16 <= counted <= answered + 16, (counted, answered)
    summary(
        f"SIGKILLed worker: {len(outcomes)} requests, {len(failed)} failed (no complete "
        f"2xx/304, beyond the {len(excused)} the dead worker had in hand); replacement "
        f"serving after {replaced - dead:.2f} s; requests counted {counted:.0f} vs answered "
        f"{answered}"
    )


# -- 3. The fetcher stopped mid-refresh ----------------------------------------------------


def _postgres_value(url: str, sql: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def _snapshot_is_whole(redis_url: str, snapshot: str) -> bool:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = RedisKeys()
        names = client.smembers(keys.snapshot_docs(snapshot))
        return bool(names) and all(
            client.exists(keys.document(snapshot, str(name))) for name in names
        )
    finally:
        client.close()


@pytest.mark.load
def test_the_fetcher_killed_mid_refresh_leaves_the_previous_snapshot_whole(
    seeded_env: dict[str, str],
    private_redis: LocalRedis,
    private_postgres: LocalPostgres,
    upstream: Upstream,
    fetcher_factory: FetcherFactory,
    api_factory: ApiFactory,
) -> None:
    """SIGKILL the fetcher after one resource's new data is committed in PostgreSQL and
    while another is still being fetched: the current snapshot stays whole and served; a
    new fetcher publishes the committed change.

    Failed: any request without a complete 2xx answer. Recovered: the committed change
    served, after the new fetcher started."""
    # The delayed fetch must not time out (and be retried) before the kill.
    fetcher = fetcher_factory({**seeded_env, "UPSTREAM_TIMEOUT_SECONDS": "60"})
    first_refresh(fetcher)
    published = snapshot_id(private_redis.url)
    assert published is not None
    api = api_factory(seeded_env)
    before = warm(api, HOT)
    records, new_digest = changed_us_current(upstream)
    upstream.fault("/v1/states/daily.json", "delay", seconds=30, times=1)  # this refresh's
    positive = "SELECT (record::jsonb->>'positive')::bigint FROM us_current"
    with Load(api, [*HOT, *QUERIES], clients=16) as load:
        load.wait_requests(300, 60)
        response = httpx.post(
            f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 202
        wait_until(
            lambda: _postgres_value(private_postgres.url, positive) == records[0]["positive"],
            30,
            what="the new US record to be committed",
        )
        fetcher.process.proc.send_signal(signal.SIGKILL)
        fetcher.process.proc.wait(timeout=10)
        killed = time.monotonic()
        assert snapshot_id(private_redis.url) == published
        assert _snapshot_is_whole(private_redis.url, published)
        load.wait_requests(500, 60, since=killed)
        restarted = time.monotonic()
        fetcher_factory(seeded_env, name="fetcher-again")
        first_new = load.wait_for(
            lambda o: o.kind == US and o.digest == new_digest,
            60,
            since=restarted,
            what="the committed change to be published",
        )
    outcomes = load.outcomes()

    failed = [o for o in outcomes if not o.ok]
    assert failed == [], describe(failed)
    meanwhile = [o for o in between(outcomes, killed, restarted) if o.kind in HOT]
    assert all(o.digest == before[o.kind] for o in meanwhile)
    summary(
        f"fetcher SIGKILLed mid-refresh: {len(outcomes)} requests, {len(failed)} failed (no "
        f"complete 2xx); snapshot {published} stayed current and whole; a new fetcher "
        f"published the committed change, served {first_new.finished - restarted:.2f} s "
        f"after it started"
    )


@pytest.mark.load
def test_a_running_fetcher_republishes_when_redis_is_behind_postgres(
    seeded_env: dict[str, str],
    private_redis: LocalRedis,
    private_postgres: LocalPostgres,
    fetcher_factory: FetcherFactory,
) -> None:
    """What a refresh that stored records and then could not publish (Redis refused, the
    fetcher died) leaves behind: PostgreSQL ahead of Redis's snapshot. The leader's Redis
    check republishes it, without waiting for the upstream to change again."""
    first_refresh(fetcher_factory(seeded_env))
    published = snapshot_id(private_redis.url)
    _postgres_value(
        private_postgres.url,
        "WITH changed AS (UPDATE us_current SET record = json_build_object('positive', 7)) "
        "UPDATE upstream_resources SET fetched_at = now() WHERE resource = 'us/current'",
    )
    wait_until(lambda: snapshot_id(private_redis.url) != published, 10, what="a new snapshot")
    current = snapshot_id(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    try:
        body = client.hget(RedisKeys().document(str(current), US.lstrip("/")), "body")
    finally:
        client.close()
    assert body is not None
    assert json.loads(body) == [{"positive": 7}]


@pytest.mark.load
@pytest.mark.recent
def test_a_one_shot_refresh_longer_than_its_lease_still_publishes(
    env: dict[str, str], private_redis: LocalRedis, upstream: Upstream
) -> None:
    """Found by these tests, whose leases are 1 s: ``refresh-once`` did not renew its lease,
    so a refresh longer than LEADER_LEASE_SECONDS was fenced at publish time."""
    upstream.fault("/v1/states/daily.json", "delay", seconds=1.5, times=1)
    started = time.monotonic()
    publish(env)  # LEADER_LEASE_SECONDS=1
    assert time.monotonic() - started > 1.5
    assert snapshot_id(private_redis.url) is not None


# -- 4. Readiness that helps, liveness that never flaps -------------------------------------


def test_with_both_stores_down_the_hot_tier_keeps_the_pod_ready(
    seeded_env: dict[str, str],
    private_redis: LocalRedis,
    private_postgres: LocalPostgres,
    api_factory: ApiFactory,
) -> None:
    """Redis and PostgreSQL both down: the documents in memory are still served, so the pod
    stays ready (a worker with nothing in memory would answer 503: see test_api); liveness
    never looks at the stores. No load, nothing timed: not marked load."""
    api = api_factory({**seeded_env, "RETRY_AFTER_SECONDS": "9"})
    before = warm(api, HOT)
    private_redis.kill()
    private_postgres.kill()
    for _ in range(10):  # several requests: both workers
        ready = httpx.get(f"{api}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "redis": "down",
            "postgres": "down",
            "memory": "ok",
        }
        assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
        for path in HOT:
            response = httpx.get(f"{api}{path}")
            assert response.status_code == 200
            assert body_digest(response.content) == before[path]
        query = httpx.get(f"{api}{QUERIES[0]}")
        assert query.status_code == 503
        assert query.headers["retry-after"] == "9"


@pytest.mark.load
def test_a_long_keep_alive_drains_within_half_the_graceful_timeout(
    clone_env: dict[str, str], api_process: ApiProcessFactory
) -> None:
    """GUNICORN_KEEPALIVE_SECONDS outlasts a load balancer's idle timeout (65 s by default):
    a stopping worker with an idle keep-alive connection drains for half the graceful timeout
    only, then closes it and exits by itself, not killed at the graceful timeout (which would
    lose the requests in flight)."""
    graceful = 6
    master, api = api_process(
        {
            **clone_env,
            "GUNICORN_KEEPALIVE_SECONDS": "60",
            "GUNICORN_GRACEFUL_TIMEOUT_SECONDS": str(graceful),
        }
    )
    port = int(api.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        signalled = time.monotonic()
        master.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
        closed = time.monotonic() - signalled
    code = master.proc.wait(timeout=30)
    stopped = time.monotonic() - signalled
    assert code == 0, master.output()[-2000:]
    assert graceful / 2 - 0.5 < closed < graceful - 1, closed
    assert stopped < graceful - 0.5, stopped
    assert "SIGKILL" not in master.output(), master.output()[-2000:]
    summary(
        f"keep-alive 60 s, graceful timeout {graceful} s: the idle connection closed "
        f"{closed:.2f} s after SIGTERM, the master exited 0 after {stopped:.2f} s"
    )


def _exchange(sock: socket.socket, path: str) -> bytes:
    """Send a GET of ``path`` on ``sock``; the answer's head in lower case (body read)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
    return receive_answer(sock).partition(b"\r\n\r\n")[0].lower()


@pytest.mark.load
def test_a_draining_worker_asks_every_client_to_close_hot_documents_included(
    clone_env: dict[str, str], api_process: ApiProcessFactory
) -> None:
    """While a worker drains, every answer carries ``Connection: close`` and the connection
    then closes: on a connection from before the signal and on new ones, for a hot document
    too (which the protocol otherwise writes itself, with no ASGI layer to add the header)."""
    master, api = api_process(
        {**clone_env, "GUNICORN_KEEPALIVE_SECONDS": "60", "GUNICORN_GRACEFUL_TIMEOUT_SECONDS": "20"}
    )
    port = int(api.rsplit(":", 1)[1])
    close = b"\r\nconnection: close"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as before:
        for _ in range(3):  # the first may fill the worker's memory tier; then from memory
            assert close not in _exchange(before, US)
        master.proc.send_signal(signal.SIGTERM)

        def new_connection_told_to_close() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    return close in _exchange(sock, US)
            except OSError:
                return False

        wait_until(new_connection_told_to_close, 8, what="a drain answer with connection: close")
        # The other worker may hold ``before`` and see its SIGTERM a tick later (uvicorn
        # checks for it every 0.1 s): until then its answers may keep the connection open.
        wait_until(lambda: close in _exchange(before, US), 8, what="connection: close on `before`")
        assert before.recv(65536) == b"", "the connection stayed open after its last answer"
