"""The FastAPI application. Run it with gunicorn (see ``gunicorn_conf``)::

    gunicorn -c python:covid_stats_api.serving.gunicorn_conf covid_stats_api.main:app

``/docs`` (Swagger UI) and ``/redoc`` are served from the installed ``fastapi-offline``
package, not a CDN, so they work without internet access.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from covid_stats_api import __version__, metrics
from covid_stats_api.api import page
from covid_stats_api.api.deps import Api
from covid_stats_api.api.docs_policy import DocsPolicy
from covid_stats_api.api.errors import install_error_handlers
from covid_stats_api.api.responses import referenced_models
from covid_stats_api.api.routes import changes, covid_stats, health, revisions, v1
from covid_stats_api.core.config import Settings, get_settings
from covid_stats_api.core.stores import Stores
from covid_stats_api.reads.answers import AnswerCache
from covid_stats_api.reads.compute import ComputePool
from covid_stats_api.reads.derived import DerivedService
from covid_stats_api.reads.documents import DocumentReader
from covid_stats_api.reads.hot import HotCache, HotWatcher
from covid_stats_api.reads.queries import QueryService
from covid_stats_api.reads.recent import RecentAnswers
from covid_stats_api.reads.span import SpanService
from covid_stats_api.serving.asgi.direct import direct_answers
from covid_stats_api.serving.asgi.fastpath import FastPath, document_paths
from covid_stats_api.serving.asgi.ratelimit import RateLimit
from covid_stats_api.serving.asgi.request_metrics import RequestMetrics
from covid_stats_api.serving.handoff import DIRECT_ANSWERS_KEY, REFUSALS_KEY
from covid_stats_runtime import tracing
from covid_stats_runtime.http import EXPOSED_HEADERS, CORSMiddleware
from covid_stats_runtime.logs import configure_logging

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# The app's routers, in the order the app matches them (one file per resource in api/routes).
ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    covid_stats.router,
    v1.router,
    revisions.router,
    changes.router,
)
# Their routes, in that order (what the fast path's table of document paths is built from).
ROUTES: tuple[BaseRoute, ...] = tuple(route for router in ROUTERS for route in router.routes)
# The documentation pages (fastapi-offline's; FastAPI's own attributes for them stay None).
DOCS_URL, REDOC_URL = "/docs", "/redoc"
# The models whose schemas the OpenAPI document's components hold: those the routes refer to.
RECORD_MODELS: tuple[type[BaseModel], ...] = referenced_models(ROUTES)


def record_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A record's JSON Schema as the api serves it: every field optional (``fields=`` may
    leave any out), unknown fields allowed (the upstream added fields over time)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("required", None)
    schema["additionalProperties"] = True
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    hot = HotCache(
        settings.hot_cache_max_bytes,
        settings.cache_policy,
        settings.hot_cache_database_ttl_seconds,
    )
    recent = RecentAnswers(settings.query_memory_cache_max_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any] | None]:
        stores = Stores(settings)
        await stores.open()
        watcher = HotWatcher(hot, stores.snapshots, settings.hot_cache_check_seconds, recent)
        watcher.start()
        gauges = asyncio.create_task(metrics.sample_gauges(stores, hot))
        reader = DocumentReader(stores, hot)
        compute = ComputePool(settings.query_compute_slots)
        answers = AnswerCache(
            stores.snapshots, settings.query_cache_ttl_seconds, settings.query_cache_max_bytes
        )
        app.state.api = Api(
            settings,
            stores,
            reader,
            QueryService(stores, answers, settings.query_answer_max_bytes, compute),
            DerivedService(reader, answers, compute),
            SpanService(stores, settings.query_cache_ttl_seconds, hot),
            recent,
        )
        # Everything built so far lives as long as the worker: keep it out of the garbage
        # collector's full passes, whose cost grows with the heap (a p99 and throughput win).
        gc.collect()
        gc.freeze()
        # What the server's protocol answers by itself (create_asgi decides), offered in the
        # lifespan state: only the app the server runs offers it.
        direct = getattr(app.state, "direct_answers", None)
        try:
            offered: dict[str, Any] = {REFUSALS_KEY: metrics.count_refusal}
            if direct is not None:
                offered[DIRECT_ANSWERS_KEY] = direct
            yield offered
        finally:
            gauges.cancel()
            await compute.close()
            await watcher.stop()
            await stores.close()

    app = FastAPIOffline(
        title="covid-stats",
        version=__version__,
        summary="COVID-19 statistics in the COVID Tracking Project v1 API's shape, "
        "served from Redis with PostgreSQL behind it.",
        lifespan=lifespan,
        # No redirect from a path with (or without) a trailing slash to the route's: such a
        # path answers 404. Starlette builds that redirect's Location from the Host header
        # (a client naming another host got a redirect there).
        redirect_slashes=False,
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD"],
        expose_headers=list(EXPOSED_HEADERS),
    )
    for router in ROUTERS:
        app.include_router(router)
    # The documentation pages' Content-Security-Policy (their inline scripts by hash).
    docs = (DOCS_URL, REDOC_URL, app.swagger_ui_oauth2_redirect_url)
    app.add_middleware(DocsPolicy, paths=[path for path in docs if path], inline_styles=[REDOC_URL])

    # The page at / and its assets, in memory from now on (served by the fast path).
    app.state.page = page.load(app.url_path_for, DOCS_URL)
    for path, entry in app.state.page.items():
        app.add_api_route(
            path,
            page.endpoint(entry),
            methods=["GET", "HEAD"],
            include_in_schema=False,
            name="page" if path == page.PAGE_PATH else f"asset {path}",
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in RECORD_MODELS:
                components[model.__name__] = record_schema(model)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.hot = hot
    app.state.recent = recent
    return app


def create_asgi(
    settings: Settings | None = None,
    tracer_provider: TracerProvider | None = None,
    api: FastAPI | None = None,
) -> ASGIApp:
    """The served application: request metrics around the rate limit (when one is set)
    around hot documents from memory, and everything else by FastAPI; inside a server span
    per request when tracing is on (``OTEL_*``, see ``covid_stats_runtime.tracing``;
    ``tracer_provider`` replaces the environment's choice). Tracing off adds nothing to the
    request path. ``api``: the FastAPI app to serve (default ``create_app(settings)``; the
    benchmark adds its naive routes to one)."""
    settings = settings or get_settings()
    api = api or create_app(settings)
    if tracer_provider is None:
        tracer_provider = tracing.create_tracer_provider("covid-stats-api", __version__)
    fast_path = FastPath(
        api, api.state.hot, document_paths(ROUTES), api.state.page, api.state.recent
    )
    api.state.direct_answers = direct_answers(fast_path, settings, tracer_provider is not None)
    app: ASGIApp = fast_path
    if settings.rate_limit_per_minute:
        app = RateLimit(
            app,
            lambda: api.state.api.stores.redis,
            settings.redis_key_prefix,
            settings.rate_limit_per_minute,
        )
    served = RequestMetrics(
        app,
        access_log_sample_rate=settings.access_log_sample_rate,
        traced=tracer_provider is not None,
    )
    if tracer_provider is None:
        return served
    tracing.instrument_clients(tracer_provider, redis=True, asyncpg=True)
    return tracing.trace_asgi(served, tracer_provider)


app = create_asgi()
