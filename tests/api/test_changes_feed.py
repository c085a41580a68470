"""``GET /v1/changes.json`` under real gunicorn, fed by the real fetcher: the publishes it
logged (the replay upstream's control API changes the data between refreshes), pages,
ETags, and the error shape for malformed parameters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from covid_stats_contract.keys import RedisKeys
from stacks import Template, cloned_env, wait_ready
from support import Upstream, check_error_body, fail_fast_env, run_fetcher, start_api

ApiFactory = Callable[[dict[str, str]], str]
FEED = "/v1/changes.json"


def current_snapshot(env: dict[str, str]) -> str:
    raw = redis.Redis.from_url(env["REDIS_URL"]).get(RedisKeys().current_snapshot)
    assert raw is not None
    return str(int(raw))


def refresh(env: dict[str, str]) -> str:
    result = run_fetcher("refresh-once", env)
    assert result.returncode == 0, result.stdout.decode()
    return current_snapshot(env)


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers={"Accept-Encoding": "identity", **headers}, timeout=30)


def feed(api: str, since: str, **more: str) -> httpx.Response:
    query = "&".join(f"{k}={quote(v)}" for k, v in {"since": since, **more}.items())
    return get(f"{api}{FEED}?{query}")


@pytest.fixture(scope="module")
def published(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[str], str]]:
    """The api after three publishes: everything (the session's template: one real
    ``refresh-once`` of the session upstream into empty stores, cloned), then one revised
    Michigan value of states/daily (its oldest day), then a changed us/current; and a refresh
    that changed nothing. Returns the api, the three snapshot ids, and an instant before them
    all (before the template's refresh). Once for the module (its tests only read): stores of
    its own (a clone of the template on a PostgreSQL database and a Redis database number no
    other test's truncation or flush reaches)."""
    upstream = upstream_server
    with cloned_env(template, redis_server_url, upstream) as cloned:
        env = fail_fast_env(cloned["REDIS_URL"], cloned["DATABASE_URL"], upstream.url)
        upstream.reset()
        try:
            before = (
                (template.refreshed_after - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
            )
            snapshots = [current_snapshot(env)]
            daily: list[dict[str, Any]] = json.loads(upstream.get("/v1/states/daily.json").content)
            oldest = min((r for r in daily if r["state"] == "MI"), key=lambda r: r["date"])
            oldest["positive"] = (oldest["positive"] or 0) + 5  # Michigan's 9 -> 14, in spirit
            upstream.fault("/v1/states/daily.json", "body", body=daily)
            snapshots.append(refresh(env))
            current: list[dict[str, Any]] = json.loads(upstream.get("/v1/us/current.json").content)
            current[0]["death"] = (current[0]["death"] or 0) + 1
            upstream.fault("/v1/us/current.json", "body", body=current)
            snapshots.append(refresh(env))
            assert refresh(env) == snapshots[-1]  # unchanged: no publish
        finally:
            upstream.reset()
        process, api = start_api(env, tmp_path_factory.mktemp("feed-api"))
        try:
            wait_ready(api)
            yield api, snapshots, before
        finally:
            process.stop()


def test_the_feed_lists_each_changing_publish_with_what_it_changed(
    published: tuple[str, list[str], str],
) -> None:
    api, snapshots, before = published
    response = feed(api, before)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    page = response.json()
    assert page["next"] is None
    changes = page["changes"]
    assert [c["snapshot_id"] for c in changes] == snapshots
    assert changes[0]["resources"] == [
        "us/current", "us/daily", "states/current", "states/daily", "states/info", "status"
    ]  # fmt: skip
    assert "MI" in changes[0]["states"]
    assert all(code.isupper() for code in changes[0]["states"])
    assert (changes[1]["resources"], changes[1]["states"]) == (["states/daily", "status"], ["MI"])
    assert (changes[2]["resources"], changes[2]["states"]) == (["us/current", "status"], [])
    times = [datetime.fromisoformat(c["published_at"]) for c in changes]
    assert times == sorted(times)
    assert times[0] > datetime.fromisoformat(before)

    # strictly after: since the first publish's time, the other two; the same instant in
    # another offset is the same question, and the same answer
    after_first = feed(api, changes[0]["published_at"])
    assert [c["snapshot_id"] for c in after_first.json()["changes"]] == snapshots[1:]
    shifted = times[0].astimezone(datetime.fromisoformat("2026-01-01T00:00:00+02:00").tzinfo)
    assert feed(api, shifted.isoformat()).content == after_first.content
    assert feed(api, changes[-1]["published_at"]).json()["changes"] == []


def test_the_feed_pages_with_next_links_and_answers_conditional_requests(
    published: tuple[str, list[str], str],
) -> None:
    api, snapshots, before = published
    whole = feed(api, before).json()["changes"]
    response = feed(api, before, limit="2")
    seen: list[dict[str, Any]] = []
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(page["changes"])
        if page["next"] is None:
            assert "link" not in response.headers
            break
        assert len(page["changes"]) == 2
        assert response.headers["link"] == f'<{page["next"]}>; rel="next"'
        response = get(f"{api}{page['next']}")
    assert seen == whole
    assert len(seen) == len(snapshots)

    first = feed(api, before)
    etag = first.headers["etag"]
    again = get(f"{api}{FEED}?since={quote(before)}", **{"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    zipped = httpx.get(f"{api}{FEED}?since={quote(before)}", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers.get("content-encoding") == "gzip"
    assert zipped.content == first.content  # httpx decodes it
    head = httpx.head(f"{api}{FEED}?since={quote(before)}", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.headers["etag"] == etag


MALFORMED = [
    ("since=yesterday", "since"),
    ("since=2026-12-04", "since"),  # no time
    ("since=2026-12-04T23:00:00", "since"),  # no offset: which instant?
    ("since=2026-13-40T25:00:00Z", "since"),
    ("since=2026-12-04T23:00:00%2B99:00", "since"),
    ("since=" + "9" * 100, "since"),
    ("since=%00", "since"),
    ("", "since"),  # missing
    ("since=2026-12-04T23:00:00Z&cursor=abc", "cursor"),
    ("since=2026-12-04T23:00:00Z&cursor=-1", "cursor"),
    ("since=2026-12-04T23:00:00Z&limit=0", "limit"),
    ("since=2026-12-04T23:00:00Z&limit=100000", "limit"),
]


def test_malformed_parameters_get_the_error_shape_and_openapi_describes_the_feed(
    service_env: dict[str, str], api_factory: ApiFactory
) -> None:
    api = api_factory(service_env)
    for query, parameter in MALFORMED:
        response = get(f"{api}{FEED}?{query}")
        detail = check_error_body(response.content, 422, "invalid_parameter")
        assert detail.parameter == parameter, query
    # no publish logged yet: an empty page, not an error
    empty = get(f"{api}{FEED}?since=2026-12-04T23:00:00Z")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"since": "2026-12-04T23:00:00.000000Z", "changes": [], "next": None}

    spec = httpx.get(f"{api}/openapi.json").json()
    operation = spec["paths"][FEED]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["since"]["required"] is True
    assert set(parameters) == {"since", "cursor", "limit", "as_of"}  # as_of: refused (422)
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"since", "changes", "next"}
    assert "422" in operation["responses"]
    assert "head" in spec["paths"][FEED]
