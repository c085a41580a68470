"""The optional per-client rate limit, against the real api (gunicorn, 2 workers) and Redis.

The limit is counted in Redis, so it holds across workers: requests alternate between two
keep-alive connections known (from the workers' socket tables) to be held by different
workers, and exactly the limit passes. Hot documents (the fast path) and FastAPI's routes
are limited alike; probes never are (nor /metrics, on its own port); a 429 has the error
shape, Retry-After and CORS headers; X-Forwarded-For is believed only from
FORWARDED_ALLOW_IPS; Redis down lets requests through; and with no limit set nothing is
counted at all.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
import redis

from covid_stats_api.core.config import Settings
from covid_stats_api.main import create_asgi
from covid_stats_api.serving.asgi.fastpath import FastPath
from covid_stats_api.serving.asgi.ratelimit import EXEMPT_PATHS, RateLimit
from covid_stats_api.serving.asgi.request_metrics import RequestMetrics
from devstack.procs import wait_until
from devstack.servers import LocalRedis
from stacks import Template
from support import (
    ApiUrl,
    Process,
    check_error_body,
    clean_env,
    metric_samples,
    start_api,
)

DOCUMENT = "/v1/us/current.json"  # a hot document: answered by the fast path
QUERY = "/v1/states/ca/daily.json?lastdays=2"  # answered by FastAPI (PostgreSQL, cache)


class Connection:
    """One keep-alive HTTP/1.1 connection (http.client keeps its socket between requests)."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.http.connect()
        assert self.http.sock is not None
        self.local_port: int = self.http.sock.getsockname()[1]

    def get(self, path: str, client: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {"X-Forwarded-For": client} if client else {}
        self.http.request("GET", path, headers=headers)
        response = self.http.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def close(self) -> None:
        self.http.close()


def _holder(workers: list[int], local_port: int) -> int | None:
    for pid in workers:
        for conn in psutil.Process(pid).net_connections():
            if conn.raddr and conn.raddr.port == local_port:
                return pid
    return None


def one_connection_per_worker(process: Process, port: int) -> list[Connection]:
    """Keep-alive connections, one held by each of the api's two workers."""
    workers = [p.pid for p in psutil.Process(process.proc.pid).children()]
    assert len(workers) == 2
    held: dict[int, Connection] = {}
    spare: list[Connection] = []
    for _ in range(100):
        conn = Connection(port)
        conn.get("/healthz")  # answered: a worker has accepted it
        pid = _holder(workers, conn.local_port)
        assert pid is not None
        if pid in held:
            spare.append(conn)
        else:
            held[pid] = conn
        if len(held) == 2:
            break
    for conn in spare:
        conn.close()
    assert len(held) == 2, "one worker accepted 100 connections in a row"
    return list(held.values())


def _metric(base: ApiUrl, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in metric_samples(httpx.get(base.metrics).text).items()
        if sample == name and wanted <= sample_labels
    )


def _start(env: dict[str, str], tmp_path: Path, started: list[Process]) -> tuple[Process, ApiUrl]:
    process, base = start_api(env, tmp_path)
    started.append(process)
    return process, base


@pytest.fixture
def apis(tmp_path: Path) -> Any:
    started: list[Process] = []
    yield lambda env: _start(env, tmp_path, started)
    for process in started:
        process.stop()


ApiStarter = Callable[[dict[str, str]], tuple[Process, ApiUrl]]


def test_the_limit_holds_across_workers_and_answers_429_with_retry_after_and_cors(
    published_env: dict[str, str], apis: ApiStarter
) -> None:
    limit = 30
    process, base = apis({**published_env, "RATE_LIMIT_PER_MINUTE": str(limit)})
    port = int(base.rsplit(":", 1)[1])
    a, b = one_connection_per_worker(process, port)
    client = "203.0.113.7"  # named by X-Forwarded-For: the peer, 127.0.0.1, is trusted

    # Alternating between the workers, hot documents and FastAPI's routes: exactly `limit`
    # requests pass (a count per worker would have let 2 x limit through).
    statuses = []
    for i in range(limit + 6):
        conn = (a, b)[i % 2]
        status, headers, body = conn.get(DOCUMENT if i % 3 else QUERY, client)
        statuses.append(status)
    assert statuses == [200] * limit + [429] * 6

    status, headers, body = a.get(DOCUMENT, client)
    assert status == 429
    error = check_error_body(body, 429, "rate_limited")
    assert str(limit) in error.message
    assert headers["content-type"] == "application/json"
    # `limit` per minute: one more every 60 / limit = 2 s, the wait Retry-After tells.
    assert headers["retry-after"] == "2"
    assert headers["access-control-allow-origin"] == "*"
    assert "retry-after" in headers["access-control-expose-headers"].lower()
    for path in ("/nope", "/v1/states/ca/current.json", "/docs"):  # every path is limited
        assert b.get(path, client)[0] == 429

    limited = _metric(base, "covid_stats_api_rate_limit_checks_total", result="limited")
    assert limited == 6 + 1 + 3  # counted over both workers
    assert _metric(base, "covid_stats_api_requests_total", status="429") == limited
    # The limit must see every request: the server writes no answer itself.
    samples = metric_samples(httpx.get(base.metrics).text)
    assert samples[("covid_stats_api_direct_answers_enabled", frozenset())] == 0

    # Probes never are (the scraper's /metrics is on another port); another client is not
    # limited by this one.
    for path in EXEMPT_PATHS:
        assert a.get(path, client)[0] == 200
        assert b.get(path, client)[0] == 200
    assert [a.get(DOCUMENT, "203.0.113.8")[0] for _ in range(10)] == [200] * 10

    # One key per client, in the api's prefix, expiring once its bucket is empty again.
    store = redis.Redis.from_url(published_env["REDIS_URL"])
    keys = sorted(store.keys("*:ratelimit:*"))
    assert keys == [b"covid-stats:ratelimit:203.0.113.7", b"covid-stats:ratelimit:203.0.113.8"]
    assert 0 < store.pttl(keys[0]) <= 62_000
    assert 0 < store.pttl(keys[1]) <= 20_000  # 10 requests x 2 s
    store.close()

    # After Retry-After, one more request passes and the next is limited again (GCRA: a
    # steady rate after the burst, not a new burst).
    wait_until(lambda: b.get(DOCUMENT, client)[0] == 200, 10, interval=0.25, what="a slot")
    assert a.get(DOCUMENT, client)[0] == 429

    a.close()
    b.close()


def test_x_forwarded_for_is_believed_only_from_forwarded_allow_ips(
    service_env: dict[str, str], apis: ApiStarter
) -> None:
    """With no trusted proxy, every request from 127.0.0.1 is one client, whatever header
    it sends: a client cannot dodge the limit by naming another address."""
    _process, base = apis({**service_env, "RATE_LIMIT_PER_MINUTE": "5", "FORWARDED_ALLOW_IPS": ""})
    statuses = [
        httpx.get(
            f"{base}/healthz/nope", headers={"X-Forwarded-For": f"198.51.100.{i}"}
        ).status_code
        for i in range(8)
    ]
    assert statuses == [404] * 5 + [429] * 3
    keys = redis.Redis.from_url(service_env["REDIS_URL"]).keys("*:ratelimit:*")
    assert keys == [b"covid-stats:ratelimit:127.0.0.1"]


def test_redis_down_lets_requests_through_and_the_limit_returns_with_it(
    private_redis: LocalRedis,
    database_url: str,
    upstream: Any,
    apis: ApiStarter,
    template: Template,
) -> None:
    env = {
        **clean_env(
            REDIS_URL=private_redis.url, DATABASE_URL=database_url, UPSTREAM_BASE_URL=upstream.url
        ),
        "RATE_LIMIT_PER_MINUTE": "3",
    }
    template.copy_into(env["REDIS_URL"], env["DATABASE_URL"])  # one refresh's data
    process, base = apis(env)
    for i in range(20):  # every worker has the document in memory (20 clients, 1 each)
        response = httpx.get(f"{base}{DOCUMENT}", headers={"X-Forwarded-For": f"192.0.2.{i}"})
        assert response.status_code == 200
    private_redis.stop()
    # Fail open: hot documents keep being served, far past the limit.
    client = {"X-Forwarded-For": "198.51.100.1"}
    for _ in range(20):
        assert httpx.get(f"{base}{DOCUMENT}", headers=client).status_code == 200
    assert _metric(base, "covid_stats_api_rate_limit_checks_total", result="unavailable") > 0
    private_redis.start()
    wait_until(
        lambda: httpx.get(f"{base}{DOCUMENT}", headers=client).status_code == 429,
        20,
        interval=0.1,
        what="the limit to apply again once Redis is back",
    )
    assert "Traceback" not in process.output()


def test_off_by_default_nothing_is_limited_or_counted(
    service_env: dict[str, str], apis: ApiStarter
) -> None:
    # No RATE_LIMIT_PER_MINUTE: the layer is not even installed.
    served = create_asgi(Settings())
    assert isinstance(served, RequestMetrics)
    assert isinstance(served.app, FastPath)
    limited = create_asgi(Settings(rate_limit_per_minute=10))
    assert isinstance(limited, RequestMetrics)
    assert isinstance(limited.app, RateLimit)

    _process, base = apis(service_env)
    with httpx.Client() as client:
        statuses = {client.get(f"{base}/nope").status_code for _ in range(300)}
    assert statuses == {404}
    assert "covid_stats_api_rate_limit" not in httpx.get(base.metrics).text
    assert redis.Redis.from_url(service_env["REDIS_URL"]).keys("*:ratelimit:*") == []
