"""The two-tier cache and the fast path, under real gunicorn (2 workers) with real Redis and
PostgreSQL: memory first, Redis behind it, one fill per question, gzip from the fetcher."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli  # type: ignore[import-untyped]  # no stubs published
import httpx
import pytest
import redis
from fastapi.routing import APIRoute

from covid_stats_api.main import ROUTES
from covid_stats_api.metrics import CACHE_LOOKUPS
from covid_stats_api.reads.hot import COVID_STATS
from covid_stats_api.reads.queries import statement
from covid_stats_contract.documents import US_CURRENT, document_family
from covid_stats_contract.edge import SURROGATE_KEY_HEADER, document_keys
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.resources import FORMATS, STATES_DAILY
from covid_stats_runtime.http import br_etag
from devstack.procs import wait_until
from devstack.servers import LocalPostgres, LocalRedis
from stacks import Template
from support import (
    ApiUrl,
    Upstream,
    metric_samples,
    representation_variants,
    run_fetcher,
    scratch_dir,
    start_api,
    warm_workers,
)

ApiFactory = Callable[[dict[str, str]], ApiUrl]
HOT = ["covid-stats", "v1/us/current.json", "v1/states/current.json", "v1/states/ca/daily.csv"]


def _warm(api: ApiUrl, paths: list[str]) -> None:
    """Every worker keeps each path (``warm_workers``)."""
    warm_workers(api, [f"/{path}" for path in paths])


def test_hot_documents_answer_from_memory_while_redis_is_down(
    service_env: dict[str, str],
    template: Template,
    private_redis: LocalRedis,
    api_factory: ApiFactory,
) -> None:
    with template.clone(private_redis.url) as database_url:
        env = {**service_env, "REDIS_URL": private_redis.url, "DATABASE_URL": database_url}
        _hot_documents_answer_from_memory_while_redis_is_down(env, private_redis, api_factory)


def _hot_documents_answer_from_memory_while_redis_is_down(
    env: dict[str, str], private_redis: LocalRedis, api_factory: ApiFactory
) -> None:
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
    published_env: dict[str, str], upstream: Upstream, api_factory: ApiFactory
) -> None:
    api = api_factory(published_env)
    _warm(api, ["v1/us/current.json"])
    changed = json.loads(upstream.get("/v1/us/current.json").content)
    changed[0]["positive"] += 1
    upstream.fault("/v1/us/current.json", "body", body=changed)
    assert run_fetcher("refresh-once", published_env).returncode == 0
    published = time.monotonic()

    def all_new() -> bool:  # 20 requests on fresh connections: both workers answer
        return all(
            json.loads(httpx.get(f"{api}/v1/us/current.json").content) == changed for _ in range(20)
        )

    wait_until(all_new, 10, what="every worker to serve the new snapshot")
    print(f"new snapshot served by every worker {time.monotonic() - published:.2f}s after publish")


def test_gzip_bodies_are_the_fetchers_and_served_when_accepted(
    published_env: dict[str, str], redis_url: str, api_factory: ApiFactory
) -> None:
    api = api_factory(published_env)
    # A cold worker renders /covid-stats around the document and compresses it as the hot
    # tier does (a small body); warm workers serve that gzip body from memory.
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


def test_brotli_bodies_are_the_fetchers_and_served_when_preferred(
    published_env: dict[str, str], redis_url: str, api_factory: ApiFactory
) -> None:
    """A client that prefers Brotli gets the fetcher's Brotli bytes, under their own strong
    tag, from both paths; q-values decide between br and gzip; a 304 answers any tag."""
    api = api_factory(published_env)
    client = redis.Redis.from_url(redis_url)
    raw_snapshot = client.get(RedisKeys().current_snapshot)
    assert isinstance(raw_snapshot, bytes)
    snapshot = raw_snapshot.decode()

    def raw_get(url: str, accept: str, **headers: str) -> tuple[httpx.Response, bytes]:
        with httpx.stream("GET", url, headers={"Accept-Encoding": accept, **headers}) as r:
            return r, b"".join(r.iter_raw())

    for path in ["v1/states/current.json", "v1/us/daily.csv", "v1/states/ca/daily.json"]:
        stored = client.hget(RedisKeys().document(snapshot, path), "br")
        assert stored, path  # the fetcher compressed it
        plain = httpx.get(f"{api}/{path}", headers={"Accept-Encoding": "identity"})
        for _ in range(3):  # cold worker (Redis), then warm ones (memory)
            for url in (f"{api}/{path}", f"{api}/{path}?ignored=1"):  # fast and slow path
                response, raw = raw_get(url, "gzip, deflate, br")  # a browser's
                assert response.headers["content-encoding"] == "br", url
                assert raw == stored
                assert brotli.decompress(raw) == plain.content
                assert response.headers["etag"] == br_etag(plain.headers["etag"])
                assert response.headers["vary"] == "Accept-Encoding"
        preferring_gzip, raw = raw_get(f"{api}/{path}", "br;q=0.5, gzip")
        assert preferring_gzip.headers["content-encoding"] == "gzip"
        assert gzip.decompress(raw) == plain.content
        refusing_br, _ = raw_get(f"{api}/{path}", "br;q=0, *")
        assert refusing_br.headers["content-encoding"] == "gzip"
        refusing_all, raw = raw_get(f"{api}/{path}", "gzip;q=0, br;q=0")
        assert "content-encoding" not in refusing_all.headers
        assert raw == plain.content
        tag = br_etag(plain.headers["etag"])
        not_modified, _ = raw_get(f"{api}/{path}", "br", **{"If-None-Match": tag})
        assert not_modified.status_code == 304


@pytest.fixture
def logging_postgres() -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL that logs every statement it executes."""
    from stacks import migrate

    with (
        scratch_dir("test-pg-log") as d,
        LocalPostgres(Path(d), settings={"log_min_duration_statement": "0"}) as server,
    ):
        migrate(server.url)
        yield server


def _executions(log: Path, since: int, sql: str) -> list[str]:
    """The lines of the server's statement log after byte ``since`` that executed ``sql``."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if "execute" in line and sql in line]


async def _burst(url: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.get(url) for _ in range(count)))


@pytest.mark.load
def test_a_thousand_concurrent_misses_cost_one_postgres_query(
    service_env: dict[str, str],
    logging_postgres: LocalPostgres,
    api_factory: ApiFactory,
    template: Template,
) -> None:
    env = {**service_env, "DATABASE_URL": logging_postgres.url}
    template.copy_into(env["REDIS_URL"], env["DATABASE_URL"])  # one refresh's data
    api = api_factory(env)
    url = f"{api}/v1/states/daily.json?states=tx,ok&lastdays=30&sort=-positive"
    # Each worker reads the data's span once per snapshot (reads.span, what a question is
    # keyed by; its statements read `FROM states_daily` too): read before the count, by
    # another question asked of each worker in turn (fresh connections alone may all reach
    # one worker on a busy machine, and the other then reads its span during the burst).
    warm_workers(api, ["/v1/states/daily.json?states=tx&lastdays=2"], rounds=4)
    since = logging_postgres.log_path.stat().st_size
    responses = asyncio.run(_burst(url, 1000))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    # The question's own statement (one sort key, descending), as the api builds it: a span
    # read again from PostgreSQL (by a worker whose Redis read of the current snapshot timed
    # out under the burst) is not a computation of the answer.
    question = statement(STATES_DAILY, (True,))
    executed = _executions(logging_postgres.log_path, since, question)
    assert len(executed) == 1, executed


@pytest.mark.load
def test_512_concurrent_connections_get_no_server_error(
    published_env: dict[str, str], api_factory: ApiFactory
) -> None:
    api = api_factory(published_env)

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


# A request the protocol leaves to the ASGI layers (it answers only requests without a body).
_VIA_ASGI = {"content-length": "0"}


def _route_paths(template: str, states: list[str]) -> list[str]:
    """A route template's concrete paths: every format, every state of the snapshot; none
    for templates with another parameter (a date: an answer, never a document)."""
    paths = [template]
    for name, values in (("fmt", list(FORMATS)), ("state", states)):
        if "{" + name + "}" in template:
            paths = [p.replace("{" + name + "}", v) for p in paths for v in values]
    return [] if "{" in "".join(paths) else paths


def _answer(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, every header but the date (in their order), and the bytes on the wire."""
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, headers, response.content


def test_the_fast_path_answers_every_document_route_as_the_slow_path_does(
    published_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """Every route of the app that serves a published document, at every format and two of
    the snapshot's states (one in upper case): the fast path answers it from memory (the
    memory tier's hit count rises by exactly the requests sent), with the status, headers
    and bytes FastAPI's route gives (the same path with a query string the route ignores
    goes there): identity, gzip, Brotli, 304 for each tag, HEAD, a cross-origin request.
    Both ways the fast path answers: written by the HTTP protocol itself (``direct``), and
    by the ASGI layer (which a request with a ``Content-Length`` header, even 0, takes)."""
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys()
    raw_snapshot = client.get(keys.current_snapshot)
    assert isinstance(raw_snapshot, bytes)
    members = client.smembers(keys.snapshot_docs(raw_snapshot.decode()))
    assert isinstance(members, set)
    published = {name.decode() if isinstance(name, bytes) else name for name in members}
    held = sorted({name.split("/")[2] for name in published if name.count("/") == 3})
    assert len(held) >= 2
    states = [held[0], held[-1].upper()]  # two of them, one in upper case
    master, api = start_api(published_env, tmp_path, workers=1)  # one worker: one fill each
    hits_name = next(iter(CACHE_LOOKUPS.describe())).name + "_total"

    def memory_hits() -> float:
        samples = metric_samples(httpx.get(api.metrics).text)
        return samples.get((hits_name, frozenset({("tier", "memory"), ("result", "hit")})), 0)

    walked: dict[str, set[str]] = {}  # route template -> the documents it served
    try:
        with httpx.Client(base_url=api, timeout=30) as http:
            for route in ROUTES:
                if not isinstance(route, APIRoute) or "GET" not in (route.methods or ()):
                    continue
                for path in _route_paths(route.path, states):
                    name = path.removeprefix("/").lower()
                    if name not in published and name != COVID_STATS:
                        continue
                    walked.setdefault(route.path, set()).add(name)
                    filled = http.get(path)  # read by FastAPI or from memory: kept there
                    assert filled.status_code == 200, path
                    # Edge-ready: its surrogate keys, those the contract gives its document
                    # (both paths send them: the answers are compared below, headers too).
                    source = US_CURRENT if name == COVID_STATS else name
                    assert filled.headers[SURROGATE_KEY_HEADER] == " ".join(
                        document_keys(source)
                    ), path
                    tag = filled.headers["etag"]
                    variants = representation_variants(tag)
                    hits_before = memory_hits()
                    for method, headers in variants:
                        direct = http.request(method, path, headers=headers)
                        asgi = http.request(method, path, headers={**headers, **_VIA_ASGI})
                        slow = http.request(method, path + "?ignored=1", headers=headers)
                        for fast in (direct, asgi):
                            assert _answer(fast) == _answer(slow), (path, method, headers)
                        assert direct.status_code in (200, 304)
                    # Each request without a query string was answered from memory (one the
                    # fast path passed on to FastAPI would be no hit).
                    assert memory_hits() - hits_before == 2 * len(variants), path
    finally:
        master.stop()

    # Every kind of published document (every state's alike), and the envelope, was walked
    # by a route that serves it.
    assert {document_family(n) for n in set().union(*walked.values())} == {
        document_family(n) for n in published | {COVID_STATS}
    }
