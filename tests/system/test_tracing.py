"""OpenTelemetry traces and the logs that point at them, with real Redis, PostgreSQL, the
replay upstream and a real OTLP/HTTP receiver (tests/otlp.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from covid_stats_api import __version__ as api_version
from covid_stats_api.core.config import Settings
from covid_stats_api.main import create_asgi
from covid_stats_runtime import tracing
from devstack.procs import free_port, wait_until
from otlp import OtlpReceiver, ReceivedSpan
from stats_fetcher import __version__ as fetcher_version
from support import run_fetcher

ApiFactory = Callable[[dict[str, str]], str]

# A caller's W3C trace context: the api's server span must continue this trace.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


# -- configuration from OTEL_* ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, None),  # no endpoint: nowhere to send
        # Only OTLP over HTTP/protobuf is installed: gRPC turns tracing off, not the service.
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            None,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            "otlp",
        ),
    ],
)
def test_tracing_is_on_only_when_the_environment_says_where_to_send(
    environ: dict[str, str], expected: str | None
) -> None:
    assert tracing.exporter_from_env(environ) == expected


def test_service_name_and_version_are_resource_attributes_the_environment_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    resource = tracing.service_resource("covid-stats-api", "1.2.3").attributes
    assert (resource["service.name"], resource["service.version"]) == ("covid-stats-api", "1.2.3")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "api-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    resource = tracing.service_resource("covid-stats-api", "1.2.3").attributes
    assert resource["service.name"] == "api-eu"
    assert resource["deployment.environment"] == "prod"
    assert resource["service.version"] == "1.2.3"


# -- the api in this process, spans to an in-memory exporter ---------------------------------


@pytest.fixture
def published(published_env: dict[str, str]) -> dict[str, str]:
    return published_env


@pytest.fixture
def traced_api(published: dict[str, str]) -> Iterator[tuple[str, InMemorySpanExporter]]:
    """The api (one uvicorn server in a thread of this process) with an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=tracing.service_resource("covid-stats-api", api_version))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        redis_url=published["REDIS_URL"],
        database_url=published["DATABASE_URL"],
        hot_cache_check_seconds=0.05,  # the watcher polls often: its reads must not show
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_asgi(settings, tracer_provider=provider),
            host="127.0.0.1",
            port=port,
            loop="asyncio",
            log_config=None,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, what="the in-process api to start")
        yield f"http://127.0.0.1:{port}", exporter
    finally:
        server.should_exit = True
        thread.join(20)
        tracing.uninstrument_clients()
        provider.shutdown()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _trace_of(spans: tuple[ReadableSpan, ...], trace_id: str) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and _hex(s.context.trace_id, 32) == trace_id]


def _redis_calls(url: str) -> int:
    """Commands Redis has run, its INFO calls left out (and they are not traced: Redis is
    instrumented in this whole process)."""
    client = redis.Redis.from_url(url)
    try:
        with tracing.untraced():
            stats = client.info("commandstats")
    finally:
        client.close()
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def test_a_request_is_a_server_span_with_redis_and_postgres_children(
    traced_api: tuple[str, InMemorySpanExporter], redis_url: str
) -> None:
    api, exporter = traced_api
    # An uncached query: the query cache is read (Redis, miss), PostgreSQL answers, the
    # answer is stored (Redis).
    response = httpx.get(
        f"{api}/v1/us/daily.json",
        params={"fields": "date,positive", "lastdays": "5"},
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 200
    assert httpx.get(f"{api}/healthz").status_code == 200  # probes are not traced

    def request_trace() -> list[ReadableSpan]:
        return _trace_of(exporter.get_finished_spans(), CALLER_TRACE)

    wait_until(
        lambda: any(s.kind == SpanKind.SERVER for s in request_trace()), 10, what="server span"
    )
    spans = request_trace()
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    assert server.name == "GET /v1/us/daily.{fmt}"  # the route template, not the raw path
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/us/daily.{fmt}"
    assert server.parent is not None
    assert _hex(server.parent.span_id, 16) == CALLER_SPAN  # continues the caller's trace
    assert server.resource.attributes["service.name"] == "covid-stats-api"
    assert server.resource.attributes["service.version"] == api_version

    assert server.context is not None
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    systems = {
        str((s.attributes or {}).get("db.system", (s.attributes or {}).get("db.system.name")))
        for s in children
    }
    assert {"redis", "postgresql"} <= systems, [(s.name, s.attributes) for s in children]
    assert all(s.kind == SpanKind.CLIENT for s in children)
    assert set(spans) == {server, *children}  # nothing else in the trace, no stray levels

    # Every span in the exporter belongs to a request: the hot tier's watcher (polling Redis
    # every 50 ms here) and probes leave none.
    polls = _redis_calls(redis_url)
    wait_until(lambda: _redis_calls(redis_url) >= polls + 10, 10, what="the watcher to poll")
    strays = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert strays == [], [(s.name, s.attributes) for s in strays]


# -- the api under gunicorn and the fetcher, exporting OTLP over HTTP ------------------------


def _json_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in {path.name}: {line!r}")
    return parsed


def test_api_under_gunicorn_exports_spans_and_logs_their_ids(
    published: dict[str, str], api_factory: ApiFactory, tmp_path: Path
) -> None:
    with OtlpReceiver() as receiver:
        api = api_factory(
            published
            | {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "ACCESS_LOG_SAMPLE_RATE": "1",
                "LOG_LEVEL": "INFO",  # the access log's level
            }
        )
        for _ in range(4):  # both workers, fast path and FastAPI
            for path in ("v1/us/current.json", "v1/states/ny/daily.json"):
                response = httpx.get(f"{api}/{path}", headers={"traceparent": TRACEPARENT})
                assert response.status_code == 200

        def servers(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            return [s for s in spans if s.trace_id == CALLER_TRACE and s.kind == 2]  # SERVER

        spans = receiver.wait_for(lambda spans: len(servers(spans)) == 8)
        assert {s.name for s in servers(spans)} == {
            "GET /v1/us/current.{fmt}",
            "GET /v1/states/{state}/daily.{fmt}",
        }
        assert all(s.parent_span_id == CALLER_SPAN for s in servers(spans))
        assert {s.resource["service.name"] for s in spans} == {"covid-stats-api"}

    # The access log: one JSON line per request (rate 1), carrying its span's ids.
    log = next(tmp_path.glob("api-*.log"))
    lines = _json_lines(log)
    requests = [line for line in lines if line.get("event") == "request"]
    probes = [r for r in requests if r["route"] == "/healthz"]  # start-up waits; untraced
    assert all("trace_id" not in r for r in probes)
    requests = [r for r in requests if r not in probes]
    assert len(requests) == 8
    logged = {(r["trace_id"], r["span_id"]) for r in requests}
    assert logged == {(s.trace_id, s.span_id) for s in servers(spans)}
    assert any(line.get("logger") == "gunicorn.error" for line in lines)  # gunicorn's, as JSON


def test_the_access_log_samples_hot_documents_too(
    published: dict[str, str], api_factory: ApiFactory, tmp_path: Path
) -> None:
    """With the access log on and tracing off, every request to a hot document is logged:
    the protocol's direct answers (which no ASGI layer sees) are off while it samples."""
    api = api_factory(published | {"ACCESS_LOG_SAMPLE_RATE": "1", "LOG_LEVEL": "INFO"})
    for _ in range(6):  # new connections: both workers
        assert httpx.get(f"{api}/v1/us/current.json").status_code == 200
    log = next(tmp_path.glob("api-*.log"))

    def logged() -> list[dict[str, object]]:
        lines = _json_lines(log)
        return [r for r in lines if r.get("event") == "request" and r["route"] != "/healthz"]

    wait_until(lambda: len(logged()) >= 6, 10, what="six access log lines")
    assert [(r["path"], r["status"]) for r in logged()] == [("/v1/us/current.json", 200)] * 6


def test_a_collector_that_is_away_never_fails_a_request(
    published: dict[str, str], api_factory: ApiFactory, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    api = api_factory(
        published
        | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    with httpx.Client() as client:
        for _ in range(100):
            for path in ("v1/us/current.json", "v1/us/daily.json?lastdays=3", "readyz"):
                assert client.get(f"{api}/{path}").status_code == 200
    log = next(tmp_path.glob("api-*.log"))
    wait_until(lambda: "Failed to export" in log.read_text(), 20, what="an export warning")
    lines = _json_lines(log)
    assert not [line for line in lines if line.get("event") == "request"]  # access log off
    assert httpx.get(f"{api}/healthz").status_code == 200


@pytest.mark.recent
def test_a_refresh_is_one_trace_fetch_validate_store_publish(
    service_env: dict[str, str],
) -> None:
    with OtlpReceiver() as receiver:
        env = service_env | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        result = run_fetcher("refresh-once", env)  # a cold refresh: everything is stored
        assert result.returncode == 0, result.stderr.decode()
        spans = receiver.wait_for(lambda spans: any(s.name == "refresh" for s in spans))

    root = next(s for s in spans if s.name == "refresh")
    assert root.parent_span_id == ""
    assert root.resource["service.name"] == "covid-stats-fetcher"
    assert root.resource["service.version"] == fetcher_version
    trace = [s for s in spans if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in trace}

    def children(name: str) -> list[ReceivedSpan]:
        return [s for s in trace if s.parent_span_id and by_id[s.parent_span_id].name == name]

    resources = ["us/current", "us/daily", "states/current", "states/daily", "states/info"]
    assert {s.name for s in children("refresh")} == {
        *(f"refresh {key}" for key in resources),
        "publish snapshot",
    } | {s.name for s in children("refresh") if s.kind == 3}  # pool set-up queries
    for key in resources:
        steps = children(f"refresh {key}")
        upstream = [s for s in steps if "http.url" in s.attributes]
        assert len(upstream) == 1, [s.name for s in steps]
        assert upstream[0].attributes["http.url"].endswith(f"/v1/{key}.json")
        assert upstream[0].attributes["http.status_code"] == 200
        assert {f"validate {key}", f"store {key}"} <= {s.name for s in steps}
        stored = children(f"store {key}")
        assert stored
        assert {s.attributes["db.system"] for s in stored} == {"postgresql"}
    published = children("publish snapshot")
    assert {s.attributes["db.system"] for s in published} >= {"redis", "postgresql"}
