"""The data's own history, end to end: the replay upstream serves the COVID Tracking
Project's real editions one after the other, the fetcher refreshes after each, and the api's
revisions are checked against what a small reader of this test computes from the raw files
(the csv module on the editions' bytes; not the replay upstream's nor the fetcher's code).
Real PostgreSQL, Redis, replay upstream, `stats-fetcher refresh-once` and the api under
gunicorn."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from conftest import archive_only
from covid_stats_contract import history
from covid_stats_contract.resources import RESOURCES
from covid_stats_runtime.http import DATA_SOURCE_HEADER
from devstack.procs import free_port
from replay_upstream.editions import CTP_EDITIONS_FROM_REPO_ROOT
from stacks import migrate, new_database, redis_database
from support import (
    REPO,
    ApiUrl,
    Upstream,
    check_error_body,
    clean_env,
    fail_fast_env,
    python_module,
    run_fetcher,
    spawn,
    sql,
    start_api,
    summary,
)

pytestmark = archive_only

EDITIONS = [(REPO / folder).resolve() for folder in CTP_EDITIONS_FROM_REPO_ROOT]
# The states daily file of each of the first two editions (the raw bytes the reader reads).
STATES_DAILY_FILES = [
    EDITIONS[0] / "states_daily.csv",
    EDITIONS[1] / "states_daily_4pm_et__as_of_20201206.csv",
]
HEADLINE = (
    "positive",
    "negative",
    "death",
    "hospitalizedCurrently",
    "totalTestResults",
    "recovered",
)


def read_states_daily(path: Path) -> tuple[list[str], dict[tuple[str, int], dict[str, str]]]:
    """The test's own reader: header, and (state, YYYYMMDD) -> {column: cell text}; a
    repeated column is read from its first occurrence, ISO dates become YYYYMMDD."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows)
        found = {}
        for row in rows:
            cells: dict[str, str] = {}
            for column, cell in zip(header, row, strict=True):
                cells.setdefault(column, cell)
            found[(cells["state"], int(cells["date"].replace("-", "")))] = cells
    return header, found


def expected_revisions(fields: tuple[str, ...]) -> set[tuple[str, int, str, str, str]]:
    """(state, date, field, old, new) of every value of ``fields`` that differs between the
    first two editions, for the state-days both have (cell texts; an empty cell: '')."""
    (_, first), (_, second) = (read_states_daily(path) for path in STATES_DAILY_FILES)
    changed = set()
    for key, old in first.items():
        new = second.get(key)
        if new is None:
            continue
        for field in fields:
            if field in old and field in new and old[field] != new[field]:
                changed.add((*key, field, old[field], new[field]))
    return changed


def cell(value: Any) -> str:
    """A JSON value of the api as the CSV files write it."""
    return "" if value is None else str(value)


def version_sizes(database_url: str, vacuum: bool = False) -> list[history.TableSize]:
    """Rows and bytes of the version tables; ``vacuum``: after VACUUM ANALYZE (which adds
    their free space and visibility maps once: autovacuum would, at any time)."""

    async def run() -> list[history.TableSize]:
        conn = await asyncpg.connect(database_url)
        try:
            if vacuum:
                for resource in RESOURCES:
                    await conn.execute(f"VACUUM ANALYZE {history.versions_table(resource)}")
            return await history.sizes(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def table_bytes(database_url: str, table: str) -> int:
    found = sql(database_url, "SELECT pg_total_relation_size($1::regclass)", table)
    return int(found[0][0])


@contextmanager
def editions_upstream(log_dir: Path) -> Iterator[Upstream]:
    """The replay upstream serving the real editions (edition 1 first), control API on."""
    port = free_port()
    process = spawn(
        "upstream-editions",
        python_module(
            "replay_upstream",
            *("--host", "127.0.0.1", "--port", str(port), "--control", "--ctp-editions"),
        ),
        clean_env(),
        log_dir,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/v1/states/daily.json", timeout=120)
        yield Upstream(url, True)
    finally:
        process.stop()


def next_edition(upstream: Upstream) -> dict[str, Any]:
    response = httpx.post(f"{upstream.url}/_control/edition", timeout=120)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def refresh(env: dict[str, str]) -> None:
    result = run_fetcher("refresh-once", env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]


def get(base: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{base}{path}", params=params, timeout=60)


def revisions_by_state(base: ApiUrl, states: set[str]) -> list[dict[str, Any]]:
    found = []
    for state in sorted(states):
        response = get(base, f"/v1/states/{state.lower()}/revisions.json")
        assert response.status_code == 200, (state, response.text)
        found += response.json()
    return found


@dataclass(frozen=True)
class FirstEdition:
    """What the api and the database held after edition 1's refresh, read before edition 2."""

    mi_revisions: Any
    us_revisions: Any
    stored: set[int]  # rows of states_daily_versions
    sizes: list[history.TableSize]
    states_daily_bytes: int
    answers: dict[int, tuple[int, str, bytes]]  # saved_answers(): every AS_OF_PATHS question
    status: bytes  # /v1/status.json


@dataclass
class Editions:
    """The real editions' stack, shared by this module's tests: stores of its own loaded by
    ``refresh-once`` of edition 1, the api under gunicorn (2 workers) over them, what it served
    then (``first``), then edition 2 refreshed and served by every worker. The instants:
    before edition 1's refresh, between the publishes (after ``first`` was read), around
    edition 2's refresh, and once every worker served it. ``third``: edition 3 loaded too (the
    module's last test does that; the others only read, and check that it has not)."""

    upstream: Upstream
    env: dict[str, str]
    database_url: str
    base: ApiUrl
    before_first: datetime
    first: FirstEdition
    between: datetime
    before_second: datetime
    after_second: datetime
    second_served: datetime
    third: bool = False

    def read_only(self) -> Editions:
        assert not self.third, "edition 3 was loaded before this test (the module's last test)"
        return self


@pytest.fixture(scope="module")
def editions(
    redis_server_url: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Editions]:
    """Once for the module: each refresh of a real edition costs seconds, the api's start too,
    and the tests read the same two publishes. Stores of their own (a PostgreSQL database and a
    Redis database number no other test's truncation or flush reaches)."""
    log_dir = tmp_path_factory.mktemp("editions")
    with (
        editions_upstream(log_dir) as upstream,
        redis_database(redis_server_url) as redis_url,
        new_database(postgres_server_url, "editions") as database_url,
    ):
        migrate(database_url)
        env = {
            **fail_fast_env(redis_url, database_url, upstream.url),
            "UPSTREAM_TIMEOUT_SECONDS": "60",
        }
        before_first = datetime.now(UTC)
        refresh(env)
        process, base = start_api(env, log_dir)
        try:
            first = FirstEdition(
                mi_revisions=get(base, "/v1/states/mi/revisions.json").json(),
                us_revisions=get(base, "/v1/us/revisions.json").json(),
                stored={
                    row["count"]
                    for row in sql(database_url, "SELECT count(*) FROM states_daily_versions")
                },
                sizes=version_sizes(database_url),
                states_daily_bytes=table_bytes(database_url, "states_daily"),
                answers=saved_answers(base),
                status=get(base, "/v1/status.json").content,
            )
            between = datetime.now(UTC)
            assert next_edition(upstream)["edition"] == 2
            before_second = datetime.now(UTC)
            refresh(env)
            after_second = datetime.now(UTC)
            wait_for_new_status(base, first.status)
            yield Editions(
                upstream,
                env,
                database_url,
                base,
                before_first,
                first,
                between,
                before_second,
                after_second,
                second_served=datetime.now(UTC),
            )
        finally:
            process.stop()


def test_revisions_of_the_real_editions(editions: Editions) -> None:
    stack = editions.read_only()
    base = stack.base
    (_, first), (_, second) = (read_states_daily(path) for path in STATES_DAILY_FILES)
    states = {state for state, _ in first} | {state for state, _ in second}
    # One edition: every record has one version, nothing is revised.
    assert stack.first.mi_revisions == []
    assert stack.first.us_revisions == []
    assert stack.first.stored == {len(first)}

    before, after = stack.before_second, stack.after_second
    served = revisions_by_state(base, states)
    got = {
        (r["state"], r["date"], r["field"], cell(r["old"]), cell(r["new"]))
        for r in served
        if r["field"] in HEADLINE
    }
    expected = expected_revisions(HEADLINE)
    assert got == expected
    # The figures, from the api's answers.
    per_field = {field: sum(1 for r in got if r[2] == field) for field in HEADLINE}
    assert per_field == {
        "positive": 1202,
        "negative": 872,
        "death": 546,
        "hospitalizedCurrently": 506,
        "totalTestResults": 4118,
        "recovered": 394,
    }
    state_days = {(r[0], r[1]) for r in got}
    assert len(state_days) == 4526
    assert len({state for state, _ in state_days}) == 37
    # Every revision was first seen in the second refresh and published in one snapshot.
    seen = {datetime.fromisoformat(r["firstSeen"].replace("Z", "+00:00")) for r in served}
    assert all(before <= moment <= after for moment in seen)
    assert len({r["snapshotId"] for r in served}) == 1
    assert None not in {r["snapshotId"] for r in served}
    # Newest first: by first seen, then date descending.
    order = [(r["firstSeen"], r["date"]) for r in served if r["state"] == "MI"]
    assert order == sorted(order, key=lambda o: (o[0], o[1]), reverse=True)

    # Michigan's positive for 2020-03-01: 9, then 14.
    mi = get(
        base,
        "/v1/states/MI/revisions.json",
        field="positive",
        **{"from": "20200301", "to": "2020-03-01"},
    )
    assert [(r["date"], r["field"], r["old"], r["new"]) for r in mi.json()] == [
        (20200301, "positive", 9, 14)
    ]
    assert mi.headers["content-type"].startswith("application/json")
    assert get(base, "/v1/states/mi/revisions.json", since=after.isoformat()).json() == []
    since_before = get(base, "/v1/states/mi/revisions.json", since=before.isoformat()).json()
    assert since_before == [r for r in served if r["state"] == "MI"]
    # CSV: the same rows.
    as_csv = get(base, "/v1/states/mi/revisions.csv", field="positive")
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    as_json = get(base, "/v1/states/mi/revisions.json", field="positive").json()
    assert [(int(r["date"]), r["old"], r["new"]) for r in rows] == [
        (r["date"], cell(r["old"]), cell(r["new"])) for r in as_json
    ]

    # The US daily totals were revised too (edition 2 carries the 2021 us_daily file).
    us = get(base, "/v1/us/revisions.json", field="positive").json()
    us_expected = us_revisions("positive")
    assert {(r["date"], cell(r["old"]), cell(r["new"])) for r in us} == us_expected
    assert all("state" not in r for r in us)

    # Hostile and malformed filters get the error shape, naming the parameter.
    bad: list[tuple[dict[str, str], str]] = [
        ({"since": "yesterday"}, "since"),
        ({"since": "2020-01-01T00:00:00"}, "since"),  # no offset: not an instant
        ({"since": "2020-13-01T00:00:00Z"}, "since"),
        ({"since": "\uff12020-01-01T00:00:00Z"}, "since"),
        ({"since": "2020-01-01T00:00:00Z" + "0" * 40}, "since"),
        ({"from": "2020-02-30"}, "from"),
        ({"to": "2020030100000"}, "to"),
        ({"from": "20200302", "to": "20200301"}, "from"),
        ({"field": "pos itive"}, "field"),
        ({"field": "positive'--"}, "field"),
        ({"field": "x" * 101}, "field"),
    ]
    for params, parameter in bad:
        for path in ("/v1/states/mi/revisions.json", "/v1/us/revisions.csv"):
            response = get(base, path, **params)
            detail = check_error_body(response.content, 422, "invalid_parameter")
            assert detail.parameter == parameter, (params, response.text)
    response = get(base, "/v1/states/zz/revisions.json")
    check_error_body(response.content, 404, "unknown_state")


def us_revisions(field: str) -> set[tuple[int, str, str]]:
    """(date, old, new) of ``field`` between the editions' us_daily.csv files."""

    def read(path: Path) -> dict[int, dict[str, str]]:
        with path.open(newline="", encoding="utf-8") as f:
            return {int(row["date"]): row for row in csv.DictReader(f)}

    old, new = read(EDITIONS[0] / "us_daily.csv"), read(EDITIONS[1] / "us_daily.csv")
    return {
        (day, old[day][field], new[day][field])
        for day in old.keys() & new.keys()
        if old[day][field] != new[day][field]
    }


# Enough refreshes for any write they made to show: a version row changes the counts at once,
# and 300 rewritten tuples (at least 32 bytes each) outgrow the free space a vacuumed table's
# last page can hold. 1,000 spent about 20 s of CPU more (the test process, the upstream's
# 5,000 304s, PostgreSQL) and could catch nothing 300 cannot.
UNCHANGED_REFRESHES = 300
FORCED_SYNCS = 3


def test_unchanged_refreshes_add_no_version(
    upstream: Upstream, published_env: dict[str, str], redis_url: str
) -> None:
    """After a refresh (published_env: the template's, cloned), UNCHANGED_REFRESHES refreshes
    of the unchanged upstream (each: five conditional requests answered 304) add 0 rows and 0 bytes
    to the version tables; so do syncs that store every resource again with the same records
    (a body that differs but holds the same records: the upsert and the delete run and change
    nothing)."""
    database_url = published_env["DATABASE_URL"]
    before = version_sizes(database_url, vacuum=True)
    published = sql(database_url, f"SELECT count(*) FROM {history.PUBLISHED}")  # noqa: S608
    assert sum(size.rows for size in before) > 0
    upstream.reset_requests()

    async def run() -> None:
        from pydantic import HttpUrl

        from covid_stats_contract import records as store
        from stats_fetcher.config import Settings
        from stats_fetcher.refresh import Refresher
        from stats_fetcher.stores import Stores

        stores = Stores(
            Settings(
                redis_url=redis_url,
                database_url=database_url,
                upstream_base_url=HttpUrl(upstream.url),
            )
        )
        try:
            pool = await stores.pool()
            refresher = Refresher(stores.upstream, pool, stores.snapshots)
            for _ in range(UNCHANGED_REFRESHES):
                result = await refresher.refresh()
                assert {o.outcome for o in result.outcomes} == {"not_modified"}
                assert result.snapshot_id is None
            async with pool.acquire() as conn:
                last = await store.upstream_states(conn)
                for attempt in range(FORCED_SYNCS):
                    for resource in RESOURCES:
                        rows = await conn.fetch(
                            f"SELECT record::text FROM {resource.table}"  # noqa: S608
                        )
                        records = [json.loads(row[0]) for row in rows]
                        state = replace(last[resource.key], content_hash=f"forced-{attempt}")
                        synced = await store.sync_resource(conn, resource, records, state)
                        assert (synced.written, synced.deleted) == (0, 0)
        finally:
            await stores.close()

    asyncio.run(run())
    counts = upstream.requests()
    not_modified = sum(c["status"].get("304", 0) for c in counts.values())
    assert not_modified == UNCHANGED_REFRESHES * len(RESOURCES)
    after = version_sizes(database_url)
    assert after == before
    assert sql(database_url, f"SELECT count(*) FROM {history.PUBLISHED}") == published  # noqa: S608


# Paths whose answers the as_of test saves after edition 1's publish: documents (lists, a
# state's, JSON and CSV), a date's path, derived series, and questions with parameters.
AS_OF_PATHS: list[tuple[str, dict[str, str]]] = [
    ("/v1/states/daily.json", {}),
    ("/v1/states/daily.csv", {}),
    ("/v1/states/mi/daily.json", {}),
    ("/v1/states/mi/daily.csv", {}),
    ("/v1/states/mi/20200301.json", {}),
    ("/v1/states/mi/20200301.csv", {"fields": "date,state,positive"}),
    ("/v1/us/daily.json", {}),
    ("/v1/us/daily.csv", {"from": "2020-03-01", "to": "20200331", "fields": "date,positive"}),
    ("/v1/us/20200315.json", {}),
    ("/v1/us/current.json", {}),
    ("/v1/states/current.json", {}),
    ("/v1/states/mi/current.csv", {}),
    ("/v1/states/info.csv", {}),
    ("/v1/states/mi/info.json", {}),
    (
        "/v1/states/daily.json",
        {"states": "mi,NY", "fields": "date,state,positive", "sort": "-positive", "lastdays": "30"},
    ),
    ("/v1/states/mi/daily.csv", {"lastdays": "14", "sort": "positive"}),
    ("/v1/states/mi/derived.json", {}),
    ("/v1/us/derived.csv", {"lastdays": "10"}),
]


def saved_answers(base: ApiUrl, **extra: str) -> dict[int, tuple[int, str, bytes]]:
    """Status, content type and body of every AS_OF_PATHS question (``extra`` added)."""
    found = {}
    for index, (path, params) in enumerate(AS_OF_PATHS):
        response = get(base, path, **params, **extra)
        found[index] = (response.status_code, response.headers["content-type"], response.content)
    return found


def wait_for_new_status(base: ApiUrl, old: bytes) -> None:
    """Until every worker serves a status other than ``old`` (the hot documents' tier checks
    for a new snapshot every HOT_CACHE_CHECK_SECONDS): ten answers in a row, 60 s at most."""
    deadline = time.monotonic() + 60
    in_a_row = 0
    while in_a_row < 10:
        assert time.monotonic() < deadline, "the api kept serving the old snapshot"
        in_a_row = in_a_row + 1 if get(base, "/v1/status.json").content != old else 0


def test_as_of_answers_as_served_then(editions: Editions) -> None:
    """Answers saved after edition 1's publish come back byte for byte with ``as_of`` an
    instant between edition 1's and edition 2's publishes; ``as_of`` after edition 2's
    equals the current answers; hostile values get the error shape naming ``as_of``."""
    stack = editions.read_only()
    base, database_url = stack.base, stack.database_url
    before_first, between, after_second = stack.before_first, stack.between, stack.second_served
    then = stack.first.answers
    assert {status for status, _, _ in then.values()} == {200}

    # How long an answer as of an instant takes: computed (the first ask of its snapshot's
    # versions), then from the answer cache.
    def timed(path: str, **params: str) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = get(base, path, **params)
        return time.perf_counter() - started, response

    for path in ("/v1/states/daily.json", "/v1/states/mi/daily.json", "/v1/states/mi/daily.csv"):
        computed, response = timed(path, as_of=between.isoformat())
        assert response.headers[DATA_SOURCE_HEADER] == "database", path
        cached = []
        for _ in range(5):
            seconds, response = timed(path, as_of=between.isoformat())
            assert response.headers[DATA_SOURCE_HEADER] == "cache", path
            cached.append(seconds)
        current = sorted(timed(path)[0] for _ in range(5))[2]
        summary(
            f"as_of {path} ({len(response.content)} bytes): computed {computed * 1000:.0f} ms, "
            f"cached {sorted(cached)[2] * 1000:.1f} ms (median of 5); the current document "
            f"{current * 1000:.1f} ms (median of 5; httpx client, decoded)"
        )
    now = saved_answers(base)
    # Edition 2 revised what these answers hold (Michigan's 2020-03-01 among them) ...
    changed = [AS_OF_PATHS[i] for i in then if then[i] != now[i]]
    assert len(changed) >= len(AS_OF_PATHS) - 4, changed
    mi = get(base, "/v1/states/mi/20200301.json").json()
    assert mi["positive"] == 14
    # ... and as of an instant between the publishes, every answer is as it was served.
    for instant in (between, between.astimezone(timezone(timedelta(hours=-5)))):
        as_of = saved_answers(base, as_of=instant.isoformat())
        for index, (path, params) in enumerate(AS_OF_PATHS):
            assert as_of[index] == then[index], (path, params, as_of[index][2][:300])
    mi_then = get(base, "/v1/states/mi/20200301.json", as_of=between.isoformat()).json()
    assert mi_then["positive"] == 9
    # The first publish's own instant is served by it; after the second, as_of is current.
    first_published = sql(
        database_url,
        f"SELECT min(published_at) FROM {history.PUBLISHED}",  # noqa: S608
    )[0][0]
    assert first_published > before_first
    exact = get(base, "/v1/states/mi/daily.json", as_of=first_published.isoformat())
    assert exact.content == then[2][2]
    assert saved_answers(base, as_of=after_second.isoformat()) == now

    # Hostile values: the error shape, naming as_of.
    early = (first_published - timedelta(microseconds=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    bad: list[tuple[str, int, str]] = [
        ("yesterday", 422, "invalid_parameter"),
        ("2020-01-01T00:00:00", 422, "invalid_parameter"),  # no offset
        ("2020-01-01", 422, "invalid_parameter"),
        ("2020-13-01T00:00:00Z", 422, "invalid_parameter"),
        ("\uff12020-01-01T00:00:00Z", 422, "invalid_parameter"),
        ("2020-01-01T00:00:00Z" + "0" * 40, 422, "invalid_parameter"),
        ("9" * 5000, 422, "invalid_parameter"),
        ("2020-01-01T00:00:00Z'; DROP TABLE states_daily--", 422, "invalid_parameter"),
        (future, 422, "invalid_parameter"),
        ("1970-01-01T00:00:00Z", 404, "not_published"),
        (early, 404, "not_published"),
    ]
    for value, status, code in bad:
        for path, params in AS_OF_PATHS[:6] + AS_OF_PATHS[-3:]:
            response = get(base, path, **params, as_of=value)
            detail = check_error_body(response.content, status, code)
            assert detail.parameter == "as_of", (path, value, response.text)
    # Paths that are histories already, or describe the data held now, refuse it.
    for path, params in [
        ("/v1/status.json", {}),
        ("/v1/states/mi/revisions.json", {}),
        ("/v1/us/revisions.csv", {}),
        ("/v1/changes.json", {"since": "2020-01-01T00:00:00Z"}),
    ]:
        response = get(base, path, **params, as_of=between.isoformat())
        detail = check_error_body(response.content, 422, "invalid_parameter")
        assert detail.parameter == "as_of", (path, response.text)
    # A state no snapshot knew is unknown then too.
    response = get(base, "/v1/states/zz/daily.json", as_of=between.isoformat())
    check_error_body(response.content, 404, "unknown_state")


def test_a_third_edition_keeps_the_revisions_and_revises_no_dropped_column(
    editions: Editions,
) -> None:
    """Edition 3, the website's download (ISO dates, another column order, no hash or fips):
    edition 2's revisions stay, a new column order or a dropped field is no revision. The
    module's last test: it loads edition 3 into the shared stack (the others only read)."""
    stack = editions.read_only()
    stack.third = True
    base, database_url = stack.base, stack.database_url
    sizes = {1: stack.first.sizes, 2: version_sizes(database_url)}
    current = {1: stack.first.states_daily_bytes, 2: table_bytes(database_url, "states_daily")}
    assert next_edition(stack.upstream)["edition"] == 3
    third_seen = datetime.now(UTC)
    refresh(stack.env)
    sizes[3] = version_sizes(database_url)
    current[3] = table_bytes(database_url, "states_daily")
    since_third = get(base, "/v1/states/mi/revisions.json", since=third_seen.isoformat()).json()
    assert since_third  # the final edition revised Michigan's history again
    assert {"hash", "fips"}.isdisjoint({r["field"] for r in since_third})
    third = get(base, "/v1/states/mi/revisions.json", **{"from": "20200301", "to": "20200301"})
    assert (20200301, "positive", 9, 14) in {
        (r["date"], r["field"], r["old"], r["new"]) for r in third.json()
    }
    for edition, found in sizes.items():
        total_rows, total_bytes = sum(s.rows for s in found), sum(s.bytes for s in found)
        daily = next(s for s in found if s.table == "states_daily_versions")
        summary(
            f"record versions after edition {edition}: {total_rows} rows, {total_bytes} bytes "
            f"(states_daily_versions {daily.rows} rows, {daily.bytes} bytes; "
            f"states_daily now {current[edition]} bytes)"
        )
    assert sizes[1] != sizes[2] != sizes[3]
