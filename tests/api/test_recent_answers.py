"""Each worker's recent query answers in memory (``reads.recent``, issue 25 item 5): the same
status, headers and bytes as the answer Redis serves, from the fast path (written by the
protocol, and by the ASGI layer) and from FastAPI; dropped on a publish; bounded in bytes;
one computation for concurrent misses. Real gunicorn (one worker), Redis and PostgreSQL; the
counts are read from the api's own metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase

from covid_stats_api.metrics import (
    CACHE_LOOKUPS,
    QUERY_COMPUTATIONS,
    QUERY_MEMORY_BYTES,
    QUERY_MEMORY_EVICTIONS,
)
from covid_stats_api.reads.recent import TIER, RecentAnswers
from covid_stats_runtime.http import Representation
from devstack.procs import wait_until
from support import (
    ApiUrl,
    Upstream,
    metric_samples,
    representation_variants,
    run_fetcher,
    start_api,
)

WARM = "/v1/states/daily.json?states=ca,ny&lastdays=30"
_VIA_ASGI = {"content-length": "0"}  # a request with a body header skips the direct answer


def _name(metric: MetricWrapperBase) -> str:
    return str(next(iter(metric.describe())).name)


def _sample(api: ApiUrl, name: str, **labels: str) -> float:
    samples = metric_samples(httpx.get(api.metrics, timeout=10).text)
    return samples.get((name, frozenset(labels.items())), 0.0)


def _lookups(api: ApiUrl, result: str) -> float:
    return _sample(api, _name(CACHE_LOOKUPS) + "_total", tier=TIER, result=result)


def _computations(api: ApiUrl) -> float:
    return _sample(api, _name(QUERY_COMPUTATIONS) + "_total")


def _answer(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, every header but the date (in their order), and the bytes on the wire."""
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, headers, response.content


def test_a_kept_answer_is_the_redis_answer_byte_for_byte(
    published_env: dict[str, str], tmp_path: Path
) -> None:
    """The same question to an api that keeps no answer in memory (every answer from Redis)
    and to one that does: from memory, by the protocol and by the ASGI layer, and from
    FastAPI (another spelling of the same question), every variant is the Redis answer's
    status, headers and bytes."""
    plain, redis_api = start_api(
        {**published_env, "QUERY_MEMORY_CACHE_MAX_BYTES": "0"}, tmp_path, workers=1
    )
    kept, api = start_api(published_env, tmp_path, workers=1)
    try:
        with httpx.Client(timeout=30) as http:
            # Computed by the worker that keeps it (from PostgreSQL, into Redis): it keeps
            # the answer as Redis serves it, not as computed.
            filled = http.get(f"{api}{WARM}")
            assert filled.status_code == 200
            assert filled.headers["x-data-source"] == "database"
            assert json.loads(filled.content)
            tag = filled.headers["etag"]
            variants = representation_variants(tag)
            hits = _lookups(api, "hit")
            for method, headers in variants:
                truth = _answer(http.request(method, f"{redis_api}{WARM}", headers=headers))
                assert truth[0] in (200, 304)
                assert (b"x-data-source", b"cache") in truth[1]
                direct = http.request(method, f"{api}{WARM}", headers=headers)
                asgi = http.request(method, f"{api}{WARM}", headers={**headers, **_VIA_ASGI})
                # Another spelling of the same question: FastAPI routes it, memory answers.
                spelled = http.request(method, f"{api}{WARM}&states=NY,CA", headers=headers)
                for response in (direct, asgi, spelled):
                    assert _answer(response) == truth, (method, headers)
            assert _lookups(api, "hit") - hits == 3 * len(variants)
            assert _sample(api, _name(QUERY_MEMORY_BYTES)) > 0
    finally:
        kept.stop()
        plain.stop()


def test_a_publish_drops_the_kept_answers(
    published_env: dict[str, str], upstream: Upstream, tmp_path: Path
) -> None:
    question = "/v1/us/daily.json?lastdays=3"
    process, api = start_api(published_env, tmp_path, workers=1)
    try:
        first = httpx.get(f"{api}{question}")
        assert first.status_code == 200
        hits = _lookups(api, "hit")
        assert httpx.get(f"{api}{question}").content == first.content
        assert _lookups(api, "hit") == hits + 1  # kept
        daily = json.loads(upstream.get("/v1/us/daily.json").content)
        daily[0]["positive"] += 1
        upstream.fault("/v1/us/daily.json", "body", body=daily)
        assert run_fetcher("refresh-once", published_env).returncode == 0

        def dropped() -> bool:
            return _sample(api, _name(QUERY_MEMORY_BYTES)) == 0

        wait_until(dropped, 10, what="the worker to drop its kept answers")
        now = httpx.get(f"{api}{question}")
        assert now.status_code == 200
        assert json.loads(now.content)[0]["positive"] == daily[0]["positive"]
        assert now.headers["etag"] != first.headers["etag"]
    finally:
        process.stop()


def test_concurrent_misses_compute_once_and_the_answer_is_kept(
    published_env: dict[str, str], tmp_path: Path
) -> None:
    """Redis keeps no answer here (its budget is 0), so neither its cache nor its fill lock
    joins the requests: the worker's single-flight does, then its memory."""
    env = {**published_env, "QUERY_CACHE_MAX_BYTES": "0"}
    process, api = start_api(env, tmp_path, workers=1)
    question = f"{api}/v1/states/daily.json?states=tx,ok&lastdays=40&sort=-positive"
    try:
        before = _computations(api)

        async def burst(count: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.get(question) for _ in range(count)))

        responses = asyncio.run(burst(50))
        assert {r.status_code for r in responses} == {200}
        assert len({r.content for r in responses}) == 1
        assert _computations(api) - before == 1
        again = asyncio.run(burst(20))
        assert {r.content for r in again} == {responses[0].content}
        assert _computations(api) - before == 1  # from memory since
    finally:
        process.stop()


def _representation(size: int, tag: str) -> Representation:
    return Representation.build(b"x" * size, b"", b"", f'"{tag}"', "application/json", [])


@pytest.mark.unit
def test_the_byte_bound_evicts_least_recently_used_answers_and_their_targets() -> None:
    recent = RecentAnswers(max_bytes=12_000)  # three of these answers, not four
    for n in range(3):
        recent.put(f"k{n}", _representation(2_500, f"t{n}"), "1", (f"/p{n}", b"q"), "/r")
    assert len(recent) == 3
    assert recent.get("k0", "1") is not None  # k0 now most recently used
    recent.put("k3", _representation(2_500, "t3"), "1", ("/p3", b"q"), "/r")
    assert recent.held <= 12_000
    assert recent.get("k1", "1") is None  # the least recently used went
    assert recent.find("/p1", b"q", "1") is None  # and the target that led to it
    assert recent.get("k0", "1") is not None
    found = recent.find("/p3", b"q", "1")
    assert found is not None
    assert found[0] == "/r"
    assert recent.get("k3", "2") is None  # another snapshot's answer is never served
    recent.put("big", _representation(20_000, "big"), "1")
    assert recent.get("big", "1") is None  # larger than the whole bound: not kept
    recent.clear()
    assert len(recent) == 0
    assert recent.held == 0
    assert recent.find("/p3", b"q", "1") is None


def test_the_byte_bound_holds_in_a_worker(published_env: dict[str, str], tmp_path: Path) -> None:
    bound = 128 * 1024  # a few of these answers (10 to 50 KB each, and gzip), not twenty
    env = {**published_env, "QUERY_MEMORY_CACHE_MAX_BYTES": str(bound)}
    process, api = start_api(env, tmp_path, workers=1)
    try:
        for days in range(5, 25):
            url = f"{api}/v1/states/daily.json?states=ca,ny&lastdays={days}"
            assert httpx.get(url).status_code == 200
        held = _sample(api, _name(QUERY_MEMORY_BYTES))
        assert 0 < held <= bound
        assert _sample(api, _name(QUERY_MEMORY_EVICTIONS) + "_total") > 0
    finally:
        process.stop()
