"""The query answer cache under hostile questions, real gunicorn, Redis and PostgreSQL:
answers keyed by what they select, empty answers and unknown states never cached, answers
over the size limit refused, the Redis byte budget (least recently used answers out, never
a snapshot's documents), and sorting by several keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from covid_stats_contract.documents import encode_record, render_array
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.resources import STATES_DAILY, US_DAILY
from support import ApiUrl, Upstream, metric_samples, start_api

ApiFactory = Callable[[dict[str, str]], str]
KEYS = RedisKeys()


def get(url: str) -> httpx.Response:
    return httpx.get(url, headers={"Accept-Encoding": "identity"}, timeout=60)


def records(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.url, response.text[:500])
    return json.loads(response.content)


def snapshot_id(client: redis.Redis) -> str:
    raw = client.get(KEYS.current_snapshot)
    assert raw is not None
    return str(raw)


def answer_keys(client: redis.Redis) -> set[str]:
    """The cached answers' keys of the current snapshot (not their fill locks)."""
    pattern = KEYS.query(snapshot_id(client), "*")
    return {
        str(key)
        for key in client.scan_iter(match=pattern, count=1000)
        if not str(key).endswith(":fill")
    }


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    error: dict[str, Any] = response.json()["error"]
    assert error["status"] == status
    assert error["code"] == code
    assert error["message"]
    return error


@pytest.fixture
def api(published_env: dict[str, str], api_factory: ApiFactory) -> str:
    """The api over the session upstream's data (published_env: one refresh's, cloned)."""
    return api_factory(published_env)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_equivalent_questions_share_one_cached_answer(
    api: str, client: redis.Redis, upstream: Upstream
) -> None:
    daily = records(upstream.get(f"/{STATES_DAILY.document()}"))
    chosen = [r for r in daily if r["state"] in ("CA", "NY")]
    dates = sorted({r["date"] for r in chosen})
    n = len(dates)
    # One question, spelled ten ways: over the whole span, states in any order and case, the
    # default sort spelled out or not, lastdays at, past or far past the span.
    spellings = [
        "states=ca,ny",
        "states=NY,ca",
        "states=ny,CA,ny&sort=-date",
        f"states=ca,ny&lastdays={n}",
        f"states=ca,ny&lastdays={n + 1}",
        "states=ca,ny&lastdays=10000",
        f"states=ca,ny&from={dates[0]}",
        "states=ca,ny&from=19990101&to=20991231",
        f"states=ca,ny&to={dates[-1]}&sort=-date,state",
        "states=ca,ny&lastdays=10000&from=2000-01-01",
    ]
    bodies = {get(f"{api}/v1/states/daily.json?{q}").content for q in spellings}
    assert len(bodies) == 1
    (body,) = bodies
    assert json.loads(body) == chosen
    assert len(answer_keys(client)) == 1

    # The last 7 dates, asked by count or by their first date: one more answer.
    week = [r for r in chosen if r["date"] >= dates[-7]]
    by_count = get(f"{api}/v1/states/daily.json?states=ny,ca&lastdays=7")
    by_date = get(f"{api}/v1/states/daily.json?states=ca,ny&from={dates[-7]}&lastdays=9")
    assert records(by_count) == records(by_date) == week
    assert by_date.headers["x-data-source"] == "cache"
    assert len(answer_keys(client)) == 2

    # Questions that are a published document are answered with it, and cache nothing.
    whole = get(f"{api}/{STATES_DAILY.document()}")
    for q in ("lastdays=10000", "sort=-date", "from=19990101", "states=ny&lastdays=5000"):
        expected = whole if "states" not in q else get(f"{api}/v1/states/ny/daily.json")
        response = get(f"{api}/v1/states/daily.json?{q}")
        assert response.content == expected.content, q
        assert response.headers["etag"] == expected.headers["etag"], q
    us = get(f"{api}/{US_DAILY.document()}")
    assert get(f"{api}/v1/us/daily.json?lastdays=10000&sort=-date").content == us.content
    assert len(answer_keys(client)) == 2


def _lookups(api: ApiUrl) -> dict[tuple[str, str], float]:
    """The api's cache lookups, {(tier, result): count}."""
    return {
        (dict(labels)["tier"], dict(labels)["result"]): value
        for (sample, labels), value in metric_samples(httpx.get(api.metrics).text).items()
        if sample == "covid_stats_api_cache_lookups_total"
    }


def _without_date(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k != "date"]


def test_a_question_that_is_a_document_is_answered_from_the_workers_memory(
    published_env: dict[str, str], tmp_path: Path
) -> None:
    """Once a worker keeps a published document, a question that selects all of it is
    answered from that copy, as the document's own URL is: no Redis read (for the states'
    daily series 13.5 MB and its compressed forms, on the event loop, each time: the hot
    documents' p99 paid for it during ``make bench-queries``)."""
    process, api = start_api(published_env, tmp_path, workers=1)
    try:
        name = STATES_DAILY.document()
        whole = get(f"{api}/{name}")  # read once: the worker keeps it
        before = _lookups(api)
        questions = ("lastdays=10000", "sort=-date", "from=19990101", "to=20991231")
        for q in questions:
            response = get(f"{api}/v1/states/daily.json?{q}")
            assert response.content == whole.content, q
            assert _without_date(response) == _without_date(whole), q
        after = _lookups(api)
        counted = {key: after[key] - before.get(key, 0) for key in after}
        assert {key: n for key, n in counted.items() if n} == {("memory", "hit"): len(questions)}
    finally:
        process.stop()


def test_empty_answers_and_unknown_states_cache_nothing(api: str, client: redis.Redis) -> None:
    records(get(f"{api}/v1/states/daily.json?states=ca&lastdays=3"))  # the span is read
    before_keys, before_size = answer_keys(client), client.dbsize()
    for year in range(1950, 2000):
        for path in ("states/daily.json", "us/daily.json", "states/ca/daily.json"):
            response = get(f"{api}/v1/{path}?from={year}0101&to={year}1231")
            assert records(response) == [], path
        assert get(f"{api}/v1/us/{year}0101.json").status_code == 404
    assert get(f"{api}/v1/states/daily.csv?from=20990101").status_code == 200

    for query in ("states=zz", "states=ca,zz", "states=ZZ,QQ&lastdays=3"):
        for path in ("states/daily.json", "states/current.csv", "states/info.json"):
            error = assert_error(get(f"{api}/v1/{path}?{query}"), 422, "unknown_state")
            assert error["parameter"] == "states"
            assert "ZZ" in error["message"]
    error = assert_error(get(f"{api}/v1/states/zz/daily.json?lastdays=3"), 404, "unknown_state")
    assert error["parameter"] == "state"
    assert answer_keys(client) == before_keys
    assert client.dbsize() == before_size


def _sort_key(record: dict[str, Any], keys: list[tuple[str, bool]]) -> tuple[Any, ...]:
    """The documented order, derived from the records: each key with nulls last, then the
    resource's own order (date descending, then state)."""
    parts: list[Any] = []
    for name, descending in keys:
        value = record.get(name)
        if value is None:
            parts += [1, 0]
        else:
            parts += [0, -value if descending else value]
    return (*parts, -record["date"], record["state"])


def test_sort_by_every_key_given(api: str, upstream: Upstream) -> None:
    daily = records(upstream.get(f"/{STATES_DAILY.document()}"))
    day = sorted({r["date"] for r in daily})[-30]
    one_day = [r for r in daily if r["date"] == day]
    keys = [("deathIncrease", True), ("positive", False)]
    expected = sorted(one_day, key=lambda r: _sort_key(r, keys))
    by_first_only = sorted(one_day, key=lambda r: _sort_key(r, keys[:1]))
    assert expected != by_first_only  # the data has ties the second key must order
    got = records(
        get(f"{api}/v1/states/daily.json?from={day}&to={day}&sort=-deathIncrease,positive")
    )
    assert [r["state"] for r in got] == [r["state"] for r in expected]
    spaced = get(f"{api}/v1/states/daily.json?from={day}&to={day}&sort=-deathIncrease, +positive")
    assert records(spaced) == got

    error = assert_error(
        get(f"{api}/v1/states/daily.json?states=ca&sort=positive,nosuch"), 422, "invalid_parameter"
    )
    assert error["parameter"] == "sort"
    error = assert_error(
        get(f"{api}/v1/states/daily.json?sort=a,b,c,d,e"), 422, "invalid_parameter"
    )
    assert error["parameter"] == "sort"


def test_answers_over_the_size_limit_are_refused(
    published_env: dict[str, str], api_factory: ApiFactory, client: redis.Redis, upstream: Upstream
) -> None:
    daily = records(upstream.get(f"/{STATES_DAILY.document()}"))
    fields = ("date", "state", "positive")
    projected = render_array(encode_record({k: r[k] for k in fields}) for r in daily)
    # A limit the projection is over, though the estimate made before computing it (a lower
    # bound: every field's name and a one-digit value) is under: the computed size refuses it.
    lower_bound = len(daily) * sum(len(name) + 4 for name in fields)
    limit = (lower_bound + len(projected)) // 2
    assert lower_bound < limit < len(projected)
    api = api_factory({**published_env, "QUERY_ANSWER_MAX_BYTES": str(limit)})
    small = get(f"{api}/v1/states/daily.json?states=ca&fields=date,positive")
    assert len(records(small)) > 0
    assert len(small.content) < limit
    answered = 1
    for query in (
        "sort=positive",  # surely over: refused before any query
        f"fields={','.join(fields)}",  # over only once computed
        f"fields={','.join(fields)}&sort=-positive",
    ):
        for fmt in ("json", "csv"):
            response = get(f"{api}/v1/states/daily.{fmt}?{query}")
            if fmt == "csv" and response.status_code == 200:  # CSV is smaller: may fit
                assert len(response.content) <= limit
                answered += 1
                continue
            error = assert_error(response, 422, "too_large")
            assert str(limit) in error["message"]
            assert f"/{STATES_DAILY.document(fmt)}" in error["message"]
            assert "from/to" in error["message"]
    assert len(answer_keys(client)) == answered  # the refused ones are not cached


def test_the_budget_evicts_answers_never_snapshot_documents(
    published_env: dict[str, str], api_factory: ApiFactory, client: redis.Redis, upstream: Upstream
) -> None:
    budget = 400_000
    # Redis's budget, seen through X-Data-Source: the workers' own memory tier (which would
    # answer a question Redis evicted) is off.
    api = api_factory(
        {**published_env, "QUERY_CACHE_MAX_BYTES": str(budget), "QUERY_MEMORY_CACHE_MAX_BYTES": "0"}
    )
    snapshot = snapshot_id(client)
    documents = {
        KEYS.document(snapshot, str(n)) for n in client.smembers(KEYS.snapshot_docs(snapshot))
    }
    assert documents
    assert all(client.exists(key) for key in documents)
    assert all(client.ttl(key) == -1 for key in documents)  # no TTL: maxmemory cannot evict them

    states = sorted({r["state"] for r in records(upstream.get("/v1/states/info.json"))})
    projection = "fields=date,state,positive,death&sort=-positive"
    kept = f"{api}/v1/states/daily.json?states=ca&{projection}"
    records(get(kept))
    for state in states:
        records(get(f"{api}/v1/states/daily.json?states={state}&{projection}"))
        assert get(kept).headers["x-data-source"] == "cache"  # used again: never the oldest
        used = int(client.get(KEYS.query_used) or 0)
        assert 0 < used <= budget
    cached = answer_keys(client)
    assert len(cached) < len(states)  # some were pushed out
    stored = sum(int(client.memory_usage(key) or 0) for key in cached)
    assert stored <= budget
    assert {str(k) for k in client.zrange(KEYS.query_lru, 0, -1)} >= cached
    first = get(f"{api}/v1/states/daily.json?states={states[0]}&{projection}")
    assert first.headers["x-data-source"] == "database"  # the least recently used went first
    assert all(client.exists(key) for key in documents)
    assert all(client.ttl(key) == -1 for key in documents)
