"""The api's full v1 surface under real gunicorn, fed through the real pipeline: conformance
with the upstream, identical answers from Redis and PostgreSQL, queries, derived series,
HTTP semantics and the offline documentation."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from conftest import archive_only
from covid_stats_api.core.config import Settings
from devstack.procs import wait_until
from devstack.servers import LocalPostgres
from stacks import Stack, Template
from support import ARCHIVE, Upstream, run_fetcher

ApiFactory = Callable[[dict[str, str]], str]


@pytest.fixture
def api(shared_api: Stack) -> str:
    """The api after one refresh of the whole upstream: the session's shared one (these tests
    only read)."""
    return shared_api.base


def get(url: str, **headers: str) -> httpx.Response:
    """GET asking for the identity representation unless told otherwise (httpx asks for
    gzip by default, and the gzip representation has its own ETag)."""
    return httpx.get(url, headers={"Accept-Encoding": "identity", **headers}, timeout=30)


def records(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.url, response.text[:500])
    return json.loads(response.content)


def csv_records(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


# -- conformance ---------------------------------------------------------------------------

ARCHIVE_PATHS = {
    "v1/us/current.json": "us_current.json",
    "v1/us/current.csv": "us_current.csv",
    "v1/us/daily.json": "us_daily.json",
    "v1/us/daily.csv": "us_daily.csv",
    "v1/states/current.json": "states_current.json",
    "v1/states/current.csv": "states_current.csv",
    "v1/states/daily.csv": "states_daily.csv",
    "v1/states/info.json": "states_info.json",
    "v1/states/info.csv": "states_info.csv",
}


@archive_only
def test_every_archived_path_returns_the_archived_bytes(api: str, subtests: Any) -> None:
    # status.json is the one exception: it describes this service's data (see docs/api.md).
    for path, name in ARCHIVE_PATHS.items():
        with subtests.test(msg=path):
            assert get(f"{api}/{path}").content == (ARCHIVE / name).read_bytes()


def test_paths_the_upstream_lacks_agree_with_the_records_they_derive_from(
    api: str, upstream: Upstream, subtests: Any
) -> None:
    current = records(upstream.get("/v1/states/current.json"))
    daily = records(upstream.get("/v1/states/daily.json"))
    info = records(upstream.get("/v1/states/info.json"))
    us_daily = records(upstream.get("/v1/us/daily.json"))
    for record in current:
        code = record["state"]
        with subtests.test(msg=f"states/{code}"):
            for variant in (code.lower(), code, code[0] + code[1].lower()):
                got = records(get(f"{api}/v1/states/{variant}/current.json"))
                assert list(got.items()) == list(record.items())
            expected_daily = [r for r in daily if r["state"] == code]
            assert records(get(f"{api}/v1/states/{code}/daily.json")) == expected_daily
            expected_info = next(r for r in info if r["state"] == code)
            assert list(records(get(f"{api}/v1/states/{code}/info.json")).items()) == list(
                expected_info.items()
            )
            sample = expected_daily[:: max(1, len(expected_daily) // 3)]
            for day in sample:
                one = records(get(f"{api}/v1/states/{code.lower()}/{day['date']}.json"))
                assert list(one.items()) == list(day.items())
    for day in us_daily[::50]:
        with subtests.test(msg=f"us/{day['date']}"):
            assert list(records(get(f"{api}/v1/us/{day['date']}.json")).items()) == list(
                day.items()
            )
    with subtests.test(msg="csv of a single record"):
        (row,) = csv_records(get(f"{api}/v1/states/ny/current.csv"))
        ny = next(r for r in current if r["state"] == "NY")
        assert list(row) == list(ny)
        assert row["positive"] == str(ny["positive"])


# -- Redis and PostgreSQL agree ------------------------------------------------------------

SAME_ANSWER_PATHS = [
    "covid-stats",
    "v1/us/current.json",
    "v1/us/daily.csv",
    "v1/states/current.csv",
    "v1/states/daily.json",
    "v1/states/info.json",
    "v1/states/ca/current.json",
    "v1/states/ca/daily.csv",
    "v1/states/ca/info.csv",
    "v1/states/ny/derived.json",
    "v1/us/derived.csv",
    "v1/states/ny/derived.json?from=2020-06-01&fields=date,testPositivity7d",
    "v1/status.json",
    "v1/states/tx/20200401.json",
    "v1/us/20200401.csv",
    "v1/states/daily.json?states=ca,ny&lastdays=5&fields=date,state,positive",
    "v1/states/daily.csv?sort=-deathIncrease&from=2020-08-01&to=2020-08-03",
    "v1/us/daily.json?fields=date,positive,death&sort=positive",
    "v1/states/current.json?states=wa,or,ca&sort=-positive",
]


def test_redis_and_postgres_answer_with_identical_bodies(
    published_env: dict[str, str], api_factory: ApiFactory, redis_url: str, subtests: Any
) -> None:
    # Redis, not memory: neither the hot documents nor the recent query answers are kept.
    api = api_factory(
        {**published_env, "HOT_CACHE_MAX_BYTES": "0", "QUERY_MEMORY_CACHE_MAX_BYTES": "0"}
    )
    from_cache = {}
    for path in SAME_ANSWER_PATHS:
        get(f"{api}/{path}")  # a query's first answer fills the cache
        response = get(f"{api}/{path}")
        assert response.headers["x-data-source"] == "cache", path
        from_cache[path] = response
    redis.Redis.from_url(redis_url).flushdb()
    for path, cached in from_cache.items():
        with subtests.test(msg=path):
            response = get(f"{api}/{path}")
            assert response.headers["x-data-source"] == "database"
            if path == "covid-stats":
                assert response.json()["data"] == cached.json()["data"]
                continue
            assert response.content == cached.content
            assert response.headers["etag"] == cached.headers["etag"]


# -- queries -------------------------------------------------------------------------------


def test_queries_filter_sort_and_project(api: str, upstream: Upstream) -> None:
    daily = records(upstream.get("/v1/states/daily.json"))
    dates = sorted({r["date"] for r in daily}, reverse=True)[:3]
    got = records(
        get(f"{api}/v1/states/daily.json?states=ny,CA, ny&lastdays=3&fields=positive,date,state")
    )
    expected = [
        {"date": r["date"], "state": r["state"], "positive": r["positive"]}
        for r in daily
        if r["state"] in ("CA", "NY") and r["date"] in dates
    ]
    assert got == expected
    assert all(list(r) == ["date", "state", "positive"] for r in got)  # the records' order

    ranked = records(get(f"{api}/v1/states/current.json?sort=-positive&fields=state,positive"))
    positives = [r["positive"] for r in ranked if r["positive"] is not None]
    assert positives == sorted(positives, reverse=True)
    assert len(ranked) == len(records(upstream.get("/v1/states/current.json")))

    window = records(get(f"{api}/v1/us/daily.json?from=20200401&to=2020-04-07"))
    assert [r["date"] for r in window] == list(range(20200407, 20200400, -1))

    as_csv = csv_records(get(f"{api}/v1/states/ny/daily.csv?lastdays=2&fields=date,death"))
    ny = [r for r in daily if r["state"] == "NY"][:2]
    assert as_csv == [{"date": str(r["date"]), "death": str(r["death"])} for r in ny]


def test_a_repeated_query_is_one_cache_read_and_survives_a_postgres_outage(
    service_env: dict[str, str],
    api_factory: ApiFactory,
    private_postgres: LocalPostgres,
    template: Template,
) -> None:
    env = {**service_env, "DATABASE_URL": private_postgres.url}
    template.copy_into(env["REDIS_URL"], env["DATABASE_URL"])  # one refresh's data
    api = api_factory(env)
    path = f"{api}/v1/states/daily.json?states=fl&lastdays=10"
    first = get(path)
    assert first.headers["x-data-source"] == "database"
    second = get(path)
    assert second.headers["x-data-source"] == "cache"
    assert second.content == first.content
    private_postgres.kill()
    third = get(path)
    assert third.status_code == 200
    assert third.content == first.content
    uncached = get(f"{api}/v1/states/daily.json?states=fl&lastdays=11")
    assert uncached.status_code == 503
    assert uncached.headers["retry-after"]
    assert get(f"{api}/v1/states/fl/daily.json").status_code == 200  # a published document


# -- derived series ------------------------------------------------------------------------


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 2)


def test_derived_series_are_rolling_averages_and_positivity(api: str, upstream: Upstream) -> None:
    for path, daily_path in [
        ("v1/us/derived.json", "/v1/us/daily.json"),
        ("v1/states/mi/derived.json", "/v1/states/mi/daily.json"),
    ]:
        daily = records(upstream.get(daily_path))  # newest first, one record per day
        derived = records(get(f"{api}/{path}"))
        assert [d["date"] for d in derived] == [r["date"] for r in daily]
        for i in (0, 10, 40):
            week = daily[i : i + 7]
            row = derived[i]
            assert row["positiveIncreaseAvg7d"] == _mean([r["positiveIncrease"] for r in week])
            assert row["deathIncreaseAvg7d"] == _mean([r["deathIncrease"] for r in week])
            tests = sum(r["totalTestResultsIncrease"] for r in week)
            positives = sum(r["positiveIncrease"] for r in week)
            assert row["testPositivity7d"] == (round(positives / tests, 4) if tests > 0 else None)
        assert derived[-1]["positiveIncreaseAvg7d"] is None  # no full week before the first day
        again = get(f"{api}/{path}")
        assert again.headers["x-data-source"] == "cache"


def test_derived_series_narrowed_and_projected(api: str) -> None:
    whole = records(get(f"{api}/v1/states/ca/derived.json"))
    dates = [r["date"] for r in whole]
    first, last = dates[40], dates[10]
    fields = "testPositivity7d,date,positiveIncreaseAvg7d"  # any order in, the records' out
    narrowed = records(
        get(f"{api}/v1/states/CA/derived.json?from={first}&to={last}&fields={fields}")
    )
    expected = [
        {k: r[k] for k in ("date", "positiveIncreaseAvg7d", "testPositivity7d")}
        for r in whole
        if first <= r["date"] <= last
    ]
    # The averages are the whole series' own: the range's first week averages the days
    # before the range too.
    assert narrowed == expected
    assert all(list(r) == ["date", "positiveIncreaseAvg7d", "testPositivity7d"] for r in narrowed)
    assert len(narrowed) == 31

    recent = records(get(f"{api}/v1/us/derived.json?lastdays=5"))
    assert recent == records(get(f"{api}/v1/us/derived.json"))[:5]
    both = records(get(f"{api}/v1/us/derived.json?lastdays=5&from={recent[2]['date']}"))
    assert both == recent[:3]
    as_csv = csv_records(get(f"{api}/v1/us/derived.csv?lastdays=2&fields=date,testPositivity"))
    assert as_csv == [
        {"date": str(r["date"]), "testPositivity": str(r["testPositivity"])} for r in recent[:2]
    ]
    assert records(get(f"{api}/v1/us/derived.json?from=20300101")) == []
    for query, parameter in [
        ("fields=date,positive", "fields"),  # a daily field, not a derived one
        ("from=2020-02-30", "from"),
        ("from=20200601&to=20200501", "from"),
        ("lastdays=0", "lastdays"),
    ]:
        response = get(f"{api}/v1/us/derived.json?{query}")
        assert response.status_code == 422, query
        assert response.json()["error"]["parameter"] == parameter, query
    unknown = get(f"{api}/v1/states/zz/derived.json?lastdays=3")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_state"


def test_answers_carry_a_gzip_body_compressed_once(api: str) -> None:
    """Queries and derived series are sent compressed to clients that accept gzip, from
    the first answer (computed) to the next ones (Redis), with the gzip body's own ETag."""
    for path in ("v1/states/daily.json?states=ca,ny", "v1/us/derived.json?from=20200401"):
        plain = get(f"{api}/{path}")
        for _ in range(2):  # the answer computed for the first GET, from Redis
            zipped = httpx.get(f"{api}/{path}", headers={"Accept-Encoding": "gzip"})
            assert zipped.headers["x-data-source"] == "cache"
            assert zipped.headers["content-encoding"] == "gzip", path
            assert int(zipped.headers["content-length"]) < len(plain.content) / 4, path
            assert zipped.content == plain.content  # httpx decompressed it
            assert zipped.headers["etag"] == plain.headers["etag"][:-1] + '-gzip"'
            # A 304 carries the tag of the representation the 200 would send; another
            # representation's tag is no match.
            for tag, accept in (
                (plain.headers["etag"], "identity"),
                (zipped.headers["etag"], "gzip"),
            ):
                again = get(f"{api}/{path}", **{"If-None-Match": tag, "Accept-Encoding": accept})
                assert again.status_code == 304
                assert again.headers["etag"] == tag
            stale = get(
                f"{api}/{path}",
                **{"If-None-Match": plain.headers["etag"], "Accept-Encoding": "gzip"},
            )
            assert stale.status_code == 200
            assert stale.headers["etag"] == zipped.headers["etag"]
    fresh = httpx.get(f"{api}/v1/us/daily.json?lastdays=100", headers={"Accept-Encoding": "gzip"})
    assert fresh.headers["x-data-source"] == "database"  # computed now, compressed at once
    assert fresh.headers["content-encoding"] == "gzip"


# -- HTTP ----------------------------------------------------------------------------------


def test_etag_304_cache_control_cors_and_head(api: str) -> None:
    url = f"{api}/v1/states/current.json"
    response = get(url, Origin="https://example.org")
    etag = response.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    policy = Settings.model_construct().cache_policy  # the shared api runs with the defaults
    assert response.headers["cache-control"] == policy.cache_control.decode()
    assert response.headers["access-control-allow-origin"] == "*"
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        not_modified = get(url, **{"If-None-Match": header})
        assert not_modified.status_code == 304, header
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
    assert get(url, **{"If-None-Match": '"other"'}).status_code == 200
    query = f"{api}/v1/states/daily.json?lastdays=1"
    query_etag = get(query).headers["etag"]
    assert get(query, **{"If-None-Match": query_etag}).status_code == 304

    head = httpx.head(url, headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == etag
    preflight = httpx.options(
        url,
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    error = get(f"{api}/v1/states/zz/current.json", Origin="https://example.org")
    assert error.headers["access-control-allow-origin"] == "*"


def test_docs_work_offline(api: str) -> None:
    page = get(f"{api}/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), asset  # served by the api itself, not a CDN
        assert get(f"{api}{asset}").status_code == 200
    spec = get(f"{api}/openapi.json").json()
    operations = [op for methods in spec["paths"].values() for op in methods.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))  # GET and HEAD are distinct operations
    assert {method for methods in spec["paths"].values() for method in methods} == {"get", "head"}
    assert {"UsRecord", "StateRecord", "StateInfo", "DerivedRecord"} <= set(
        spec["components"]["schemas"]
    )


def test_status_describes_the_data(api: str) -> None:
    status = records(get(f"{api}/v1/status.json"))
    assert list(status) == ["buildTime", "production", "runNumber"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", status["buildTime"])
    assert status["production"] is True


@pytest.mark.recent
def test_the_api_waits_for_data_then_serves_it(
    service_env: dict[str, str], api_factory: ApiFactory
) -> None:
    api = api_factory(service_env)
    for path in ("v1/us/daily.json", "v1/states/ca/20200401.json", "v1/us/derived.json"):
        response = get(f"{api}/{path}")
        assert response.status_code == 503, path
        assert response.headers["retry-after"]
    assert run_fetcher("refresh-once", service_env).returncode == 0
    wait_until(lambda: get(f"{api}/v1/us/derived.json").status_code == 200, 10, what="the data")
