"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` environment variables.

Tracing is **on** when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, OTLP over HTTP/protobuf) or when
``OTEL_TRACES_EXPORTER=console``; **off** otherwise, and always off with
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. Off means no provider, no
instrumentation, no middleware: nothing on the request path.

Everything else is the SDK's own reading of the environment: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (they override the service's name and version given here),
``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*`` (batching),
``OTEL_EXPORTER_OTLP_HEADERS``/``_TIMEOUT``/``_CERTIFICATE``.

Spans leave through a ``BatchSpanProcessor``: its thread exports in the background, so a
collector that is away costs a logged warning and dropped spans, never a slow or failed
request.

The SDK and the instrumentations are imported when tracing is on, not before: off, every
process (each api worker, each fetcher command) is spared their import, about 40 ms of CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog
from opentelemetry import context, trace

if TYPE_CHECKING:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.types import ASGIApp

log = structlog.get_logger("covid_stats_runtime.tracing")

SUPPORTED_PROTOCOL = "http/protobuf"
# Every variable this module and the OpenTelemetry SDK read starts with it.
OTEL_ENV_PREFIX = "OTEL_"

# Probes and scrapes: frequent, uninteresting, and they would drown the traces that matter.
# OTEL_PYTHON_EXCLUDED_URLS (or OTEL_PYTHON_ASGI_EXCLUDED_URLS) replaces this list.
DEFAULT_EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporter_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """Which exporter the environment asks for: ``"otlp"``, ``"console"`` or ``None`` (off)."""
    if _flag(environ.get("OTEL_SDK_DISABLED")):
        return None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    if "console" in names:
        return "console"
    if "otlp" not in names:
        return None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", SUPPORTED_PROTOCOL
    )
    if protocol != SUPPORTED_PROTOCOL:
        log.warning(
            "tracing_off",
            reason=f"OTLP protocol {protocol!r} is not installed; use {SUPPORTED_PROTOCOL!r}",
        )
        return None
    return "otlp"


def service_resource(service_name: str, version: str) -> Resource:
    """``service.name`` and ``service.version``, unless the environment says otherwise."""
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )

    defaults = Resource.create({SERVICE_NAME: service_name, SERVICE_VERSION: version})
    return defaults.merge(OTELResourceDetector().detect())


def create_tracer_provider(
    service_name: str,
    version: str,
    exporter: SpanExporter | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TracerProvider | None:
    """A provider exporting as the environment asks, or ``None`` when tracing is off.
    ``exporter`` replaces the environment's choice (tests pass an in-memory one)."""
    if exporter is None:
        kind = exporter_from_env(environ)
        if kind is None:
            return None
        if kind == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter(
                service_name=service_name,
                formatter=lambda span: span.to_json(indent=None) + os.linesep,  # one line
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=service_resource(service_name, version))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument_clients(
    provider: TracerProvider, *, redis: bool = True, asyncpg: bool = True, httpx: bool = False
) -> None:
    """Client spans for Redis, PostgreSQL (asyncpg) and outgoing HTTP (httpx, which also
    sends the ``traceparent`` header upstream). Patches the libraries' classes for the whole
    process; call once per process."""
    if redis:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=provider)
    if asyncpg:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    if httpx:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument(tracer_provider=provider)


def uninstrument_clients() -> None:
    """Undo ``instrument_clients`` (tests that instrument inside the test process)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    for instrumentor in (RedisInstrumentor(), asyncpg, HTTPXClientInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def trace_asgi(
    app: ASGIApp, provider: TracerProvider, environ: Mapping[str, str] = os.environ
) -> OpenTelemetryMiddleware:
    """A server span around every HTTP request ``app`` answers, continuing the caller's
    trace from its ``traceparent`` header; probes and ``/metrics`` are left out."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    excluded = (
        environ.get("OTEL_PYTHON_ASGI_EXCLUDED_URLS")
        or environ.get("OTEL_PYTHON_EXCLUDED_URLS")
        or DEFAULT_EXCLUDED_URLS
    )
    return OpenTelemetryMiddleware(
        app,
        excluded_urls=excluded,
        tracer_provider=provider,
        # No internal spans per ASGI message: a request is one server span + its clients.
        exclude_spans=["receive", "send"],
    )


@contextmanager
def new_trace(tracer: trace.Tracer, name: str) -> Iterator[trace.Span]:
    """``name`` as the root span of a new trace, with client spans inside even when called
    from ``untraced()`` code (a background check that found work worth tracing)."""
    token = context.attach(context.Context())
    try:
        with tracer.start_as_current_span(name) as span:
            yield span
    finally:
        context.detach(token)


@contextmanager
def untraced() -> Iterator[None]:
    """No client spans inside: for background polling (the hot tier's watcher, the leader
    lease) that would otherwise start a trace every few hundred milliseconds."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield
