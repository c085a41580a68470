"""The api under real gunicorn (2 uvicorn workers) against real Redis, PostgreSQL and the
replay upstream, with the fetcher publishing through the real pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import redis

from conftest import archive_only
from devstack.procs import free_port
from stacks import Stack
from support import ARCHIVE, ApiUrl, Upstream, check_error_body, run_fetcher, warm_workers

ApiFactory = Callable[[dict[str, str]], ApiUrl]


def _refresh(env: dict[str, str]) -> None:
    result = run_fetcher("refresh-once", env)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return check_error_body(response.content, status, code).model_dump(exclude_none=True)


def test_end_to_end_the_api_serves_exactly_what_the_upstream_served(
    service_env: dict[str, str], upstream: Upstream, api_factory: ApiFactory
) -> None:
    base = api_factory(service_env)
    # Before the fetcher has published anything: 503 with Retry-After, not ready.
    _assert_error(httpx.get(f"{base}/covid-stats"), 503, "no_data")
    assert httpx.get(f"{base}/readyz").status_code == 503

    _refresh(service_env)  # the api picks it up without a restart

    us = httpx.get(f"{upstream.url}/v1/us/current.json").content
    states = httpx.get(f"{upstream.url}/v1/states/current.json").content
    for _ in range(20):  # several requests, so both workers answer (and hold it in memory)
        response = httpx.get(f"{base}/covid-stats")
        assert response.status_code == 200
        assert response.json() == {"source": "cache", "data": json.loads(us)}
    response = httpx.get(f"{base}/v1/us/current.json")
    assert response.content == us
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-data-source"] == "cache"
    assert response.headers["etag"].startswith('"')
    assert httpx.get(f"{base}/v1/states/current.json").content == states
    new_york = next(r for r in json.loads(states) if r["state"] == "NY")
    for code in ("ny", "NY", "Ny"):
        response = httpx.get(f"{base}/v1/states/{code}/current.json")
        assert response.status_code == 200
        assert list(response.json().items()) == list(new_york.items())
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "redis": "ok", "postgres": "ok", "memory": "ok"}


@archive_only
def test_the_archive_records_come_back_unchanged(shared_api: Stack) -> None:
    base = shared_api.base
    assert httpx.get(f"{base}/covid-stats").json()["data"] == json.loads(
        (ARCHIVE / "us_current.json").read_bytes()
    )
    for path, name in [
        ("v1/us/current.json", "us_current.json"),
        ("v1/states/current.json", "states_current.json"),
    ]:
        assert httpx.get(f"{base}/{path}").content == (ARCHIVE / name).read_bytes()


def test_when_redis_misses_postgres_serves_the_same_bytes(
    published_env: dict[str, str], redis_url: str, api_factory: ApiFactory
) -> None:
    base = api_factory({**published_env, "HOT_CACHE_MAX_BYTES": "0"})  # no in-process tier
    paths = ["v1/us/current.json", "v1/states/current.json", "v1/states/ca/current.json"]
    identity = {"Accept-Encoding": "identity"}
    cached = {path: httpx.get(f"{base}/{path}", headers=identity) for path in paths}
    redis.Redis.from_url(redis_url).flushdb()
    for path, before in cached.items():
        after = httpx.get(f"{base}/{path}", headers=identity)
        assert after.status_code == 200
        assert after.headers["x-data-source"] == "database"
        assert after.content == before.content
        assert after.headers["etag"] == before.headers["etag"]
    envelope = httpx.get(f"{base}/covid-stats").json()
    assert envelope["source"] == "database"
    assert envelope["data"] == json.loads(cached["v1/us/current.json"].content)
    _assert_error(httpx.get(f"{base}/v1/states/zz/current.json"), 404, "unknown_state")


def test_when_redis_is_down_postgres_serves_and_the_api_stays_ready(
    published_env: dict[str, str], api_factory: ApiFactory
) -> None:
    base = api_factory({**published_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    response = httpx.get(f"{base}/covid-stats")
    assert response.status_code == 200
    assert response.json()["source"] == "database"
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    # Documents rendered from PostgreSQL stay in memory only briefly: not a snapshot.
    assert ready.json() == {
        "status": "ready",
        "redis": "down",
        "postgres": "ok",
        "memory": "empty",
    }
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_when_postgres_is_down_redis_serves(
    published_env: dict[str, str], api_factory: ApiFactory
) -> None:
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/covid_stats"
    base = api_factory({**published_env, "DATABASE_URL": dead_db})
    # Each worker in turn answers from Redis and keeps the documents in memory: /readyz may
    # reach either. (Twenty requests on fresh connections once left one worker with none.)
    answered = warm_workers(base, ["/covid-stats"], rounds=4)
    assert json.loads(answered["/covid-stats"])["source"] == "cache"
    assert httpx.get(f"{base}/v1/states/tx/current.json").status_code == 200
    assert httpx.get(f"{base}/readyz").json() == {
        "status": "ready",
        "redis": "ok",
        "postgres": "down",
        "memory": "ok",
    }


def test_with_no_store_reachable_data_paths_answer_503_and_liveness_stays_up(
    service_env: dict[str, str], api_factory: ApiFactory
) -> None:
    base = api_factory(
        {
            **service_env,
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/covid_stats",
            "RETRY_AFTER_SECONDS": "17",
        }
    )
    for path in ["covid-stats", "v1/us/current.json", "v1/states/ca/current.json"]:
        response = httpx.get(f"{base}/{path}")
        _assert_error(response, 503, "no_data")
        assert response.headers["retry-after"] == "17"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "redis": "down",
        "postgres": "down",
        "memory": "empty",
    }


BAD_REQUESTS = [
    # (method, path, status, code, parameter at fault)
    ("GET", "/nope", 404, "not_found", None),
    ("GET", "/v1/us/current.xml", 422, "invalid_parameter", "fmt"),
    ("GET", "/v1/us/2020-13-45.json", 422, "invalid_parameter", "date"),
    ("GET", "/v1/us/20201345.json", 422, "invalid_parameter", "date"),
    ("GET", "/v1/us/19990101.json", 404, "not_found", None),
    ("GET", "/v1/states/zz/current.json", 404, "unknown_state", "state"),
    ("GET", "/v1/states/zz/daily.json", 404, "unknown_state", "state"),
    ("GET", "/v1/states/zz/20200401.json", 404, "unknown_state", "state"),
    ("GET", "/v1/states/zz/derived.json", 404, "unknown_state", "state"),
    ("GET", "/v1/states/ca/19990101.json", 404, "not_found", None),
    ("GET", "/v1/states/cal/current.json", 422, "invalid_parameter", "state"),
    ("GET", "/v1/states/c1/current.json", 422, "invalid_parameter", "state"),
    ("GET", "/v1/states/%00%ff/current.json", 422, "invalid_parameter", "state"),
    ("GET", "/v1/states/" + "x" * 5000 + "/current.json", 422, "invalid_parameter", "state"),
    ("GET", "/v1/states/daily.json?fields=nope", 422, "invalid_parameter", "fields"),
    ("GET", "/v1/states/daily.json?fields=a%20b", 422, "invalid_parameter", "fields"),
    ("GET", "/v1/states/daily.json?sort=-nope", 422, "invalid_parameter", "sort"),
    ("GET", "/v1/states/daily.json?from=2020-02-30", 422, "invalid_parameter", "from"),
    ("GET", "/v1/states/daily.json?from=20200501&to=20200401", 422, "invalid_parameter", "from"),
    ("GET", "/v1/states/daily.json?lastdays=0", 422, "invalid_parameter", "lastdays"),
    ("GET", "/v1/states/daily.json?lastdays=x", 422, "invalid_parameter", "lastdays"),
    ("GET", "/v1/states/daily.json?states=ca,c1", 422, "invalid_parameter", "states"),
    ("POST", "/covid-stats", 405, "method_not_allowed", None),
    ("DELETE", "/v1/us/current.json", 405, "method_not_allowed", None),
]


def test_bad_requests_get_a_clear_json_error(shared_api: Stack, subtests: pytest.Subtests) -> None:
    base = shared_api.base
    for method, path, status, code, parameter in BAD_REQUESTS:
        with subtests.test(msg=f"{method} {path[:60]}"):
            error = _assert_error(httpx.request(method, base + path), status, code)
            assert error.get("parameter") == parameter
