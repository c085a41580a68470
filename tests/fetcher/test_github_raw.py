"""The default upstream's shape: the archived CTP files as raw.githubusercontent.com serves
them (a path prefix, ``text/plain`` for .json and .csv, strong ETags and 304s, no
Last-Modified), played by the replay upstream's ``--github-raw`` option (there is no internet
here), and the fetcher reading it end to end as real processes; bodies over
``UPSTREAM_MAX_BYTES`` fail and keep the last good data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from covid_stats_contract.resources import FORMATS, RESOURCES, STATES_DAILY, Format
from devstack.procs import wait_until
from replay_upstream.app import GITHUB_RAW_CONTENT_TYPE, GITHUB_RAW_PREFIX
from stats_fetcher.config import DEFAULT_UPSTREAM_BASE_URL, Settings
from support import (
    RECENT,
    Fetcher,
    Upstream,
    clean_env,
    run_fetcher,
    start_upstream,
)
from test_fetcher import TOKEN, body, query, refresh, snapshot_id

# The raw upstream serves the `recent` upstream's data (support.RECENT), and the tests compare
# what the fetcher stored with the `recent` upstream's bytes.
pytestmark = pytest.mark.recent


@pytest.fixture(scope="module")
def github_raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The replay upstream in the default upstream's shape, with its control API; its
    ``url`` is the root (the control API's), the data is under GITHUB_RAW_PREFIX."""
    process, upstream = start_upstream(
        "github-raw",
        tmp_path_factory.mktemp("github-raw-logs"),
        "--github-raw",
        *RECENT,  # the data of the `recent` upstream, which the tests compare with
        ready_path=GITHUB_RAW_PREFIX,
    )
    yield upstream
    process.stop()


@pytest.fixture
def raw(github_raw: Upstream) -> Upstream:
    github_raw.reset()
    return github_raw


def base_url(upstream: Upstream) -> str:
    """UPSTREAM_BASE_URL for the replay: the default's path, on the replay's host."""
    return f"{upstream.url}{urlparse(DEFAULT_UPSTREAM_BASE_URL).path}"


def test_the_replay_plays_the_default_upstreams_shape(raw: Upstream, upstream: Upstream) -> None:
    # The prefix the replay serves is the one of the fetcher's default upstream.
    assert urlparse(DEFAULT_UPSTREAM_BASE_URL).path == f"{GITHUB_RAW_PREFIX}/"
    assert str(Settings().upstream_base_url) == DEFAULT_UPSTREAM_BASE_URL
    for path in ("/v1/us/current.json", "/v1/states/daily.csv", "/v1/states/ny/daily.json"):
        answer = httpx.get(f"{base_url(raw)}{path.lstrip('/')}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == GITHUB_RAW_CONTENT_TYPE
        assert "last-modified" not in answer.headers
        etag = answer.headers["etag"]
        assert etag.startswith('"'), etag  # strong
        assert answer.content == upstream.get(path).content  # the same bytes
        again = httpx.get(f"{base_url(raw)}{path.lstrip('/')}", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert httpx.get(f"{raw.url}{path}").status_code == 404  # only under the prefix


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_fetcher_reads_the_default_upstreams_shape(
    fmt: Format, redis_url: str, database_url: str, raw: Upstream, upstream: Upstream
) -> None:
    env = clean_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        UPSTREAM_BASE_URL=base_url(raw),
        UPSTREAM_FORMAT=fmt,
    )
    refresh(env)
    for resource in RESOURCES:
        served = upstream.get(resource.upstream_path("json")).content
        assert body(redis_url, resource.document("json")) == served, resource.key
    counts = raw.requests()
    assert set(counts) == {r.upstream_path(fmt) for r in RESOURCES}  # base path + v1 path
    raw.reset_requests()
    first = snapshot_id(redis_url)
    refresh(env)  # unchanged: If-None-Match with the stored strong ETags, 304s
    counts = raw.requests()
    assert sum(c["conditional"] for c in counts.values()) == len(RESOURCES)
    assert sum(c["status"].get("304", 0) for c in counts.values()) == len(RESOURCES)
    assert snapshot_id(redis_url) == first


def test_a_body_over_upstream_max_bytes_fails_and_keeps_the_last_good_data(
    redis_url: str, database_url: str, raw: Upstream, fetcher_factory: Any
) -> None:
    env = clean_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        UPSTREAM_BASE_URL=base_url(raw),
        UPSTREAM_RETRIES="0",
        REFRESH_TOKEN=TOKEN,
        FETCH_INTERVAL_SECONDS="3600",
    )
    refresh(env)
    daily_path = f"{base_url(raw)}{STATES_DAILY.upstream_path('json').lstrip('/')}"
    good = httpx.get(daily_path).content
    sizes = [
        len(httpx.get(f"{base_url(raw)}{r.upstream_path('json')[1:]}").content) for r in RESOURCES
    ]
    limit = len(good) // 2
    assert sorted(sizes)[-2] < limit  # every other resource fits
    changed: list[dict[str, Any]] = json.loads(good)
    changed[0]["positive"] = (changed[0]["positive"] or 0) + 1
    raw.fault(STATES_DAILY.upstream_path("json"), "body", body=changed)
    stored_hash = query(
        database_url, "SELECT content_hash FROM upstream_resources WHERE resource = 'states/daily'"
    )

    fetcher: Fetcher = fetcher_factory({**env, "UPSTREAM_MAX_BYTES": str(limit)})
    reason = {"resource": STATES_DAILY.key, "reason": "too_large"}
    wait_until(
        lambda: fetcher.metric("covid_stats_fetcher_fetch_errors_total", **reason) >= 1,
        30,
        what="the too_large failure",
    )
    assert '"too_large"' in fetcher.process.output()
    assert body(redis_url, STATES_DAILY.document("json")) == good  # the last good data
    assert (
        query(
            database_url,
            "SELECT content_hash FROM upstream_resources WHERE resource = 'states/daily'",
        )
        == stored_hash
    )
    # Under the limit, the same body goes through.
    fetcher.process.stop()  # releases the leader lease
    result = run_fetcher("refresh-once", env)
    assert result.returncode == 0, result.stdout.decode()[-2000:]
    assert json.loads(body(redis_url, STATES_DAILY.document("json")) or b"") == changed
