"""The fetcher's own HTTP port: probes, metrics, and ``POST /refresh``.

- ``GET /healthz``: the process answers (checks nothing else).
- ``GET /readyz``: Redis and PostgreSQL answer; 503 when either store is unreachable or the
  schema refused. The body is ``{"status": "ready"|"unavailable"}`` only (what a probe needs);
  with ``Authorization: Bearer <REFRESH_TOKEN>`` it also says which store is down, whether
  this replica leads, and (``schema``) why the database's schema was refused.
- ``GET /metrics``: Prometheus text format.
- ``POST /refresh``: asks the leader (whichever replica it is) to refresh now. Needs
  ``Authorization: Bearer <REFRESH_TOKEN>``: 401 without or with a wrong token (compared in
  constant time); 403 when no token is configured (the endpoint is off); 202 when accepted.

Errors, unknown paths and wrong methods included, have the api's error shape
(``covid_stats_runtime.http``); every answer carries its ``SERVER_HEADERS`` and no
``Server`` header. The port serves through the api's limited protocol
(``covid_stats_runtime.protocol``): the same head limit and timeouts
(``HTTP_MAX_REQUEST_HEAD_BYTES``, ``HTTP_REQUEST_TIMEOUT_SECONDS``,
``HTTP_NEW_CONNECTION_TIMEOUT_SECONDS``), its refusals counted in
``covid_stats_fetcher_invalid_requests_total{status}`` and logged sampled.

The server runs inside the service's event loop (:func:`embedded_server`) and needs of it only
the small :class:`Service` protocol, so this module does not import ``service``.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from covid_stats_runtime.http import SERVER_HEADERS, http_error_response, starlette_error_response
from covid_stats_runtime.protocol import limited_protocol
from covid_stats_runtime.tracing import trace_asgi
from stats_fetcher.config import Settings
from stats_fetcher.metrics import INVALID_REQUESTS

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# uvicorn's keep-alive timeout on this port: the probes and Prometheus connect anew, or
# reuse a connection within seconds.
KEEP_ALIVE_SECONDS = 5


class Service(Protocol):
    """What the HTTP port needs from the running service (``service.FetcherService``)."""

    async def readiness(self) -> dict[str, Any]:
        """``{"leader": bool, "redis": "ok"|"down", "postgres": "ok"|"down"}``."""
        ...

    async def request_refresh(self) -> bool:
        """Ask the leader, wherever it runs, to refresh now. False when that fails."""
        ...


def _bearer_matches(request: Request, token: SecretStr | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (constant time)."""
    if token is None:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected)


def create_app(service: Service, refresh_token: SecretStr | None) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await service.readiness()
        ready = checks["redis"] == "ok" and checks["postgres"] == "ok"
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
        if _bearer_matches(request, refresh_token):  # the details: for operators only
            body.update(checks)
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def refresh(request: Request) -> Response:
        if refresh_token is None:
            return starlette_error_response(
                403, "disabled", "POST /refresh is off: no REFRESH_TOKEN is configured"
            )
        if not _bearer_matches(request, refresh_token):
            return starlette_error_response(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not await service.request_refresh():
            return starlette_error_response(
                503, "unavailable", "Redis is unreachable: cannot reach the leader"
            )
        return JSONResponse({"status": "accepted"}, status_code=202)

    app = Starlette(
        exception_handlers={HTTPException: http_error_response},
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/refresh", refresh, methods=["POST"]),
        ],
    )
    # A trailing slash is an unknown path (404): Starlette's redirect is built from Host.
    app.router.redirect_slashes = False
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the service, not uvicorn, handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def embedded_server(
    service: Service, settings: Settings, tracer_provider: TracerProvider | None = None
) -> uvicorn.Server:
    """The port's server, to run in the service's event loop (``await server.serve()``; set
    ``server.should_exit`` to stop it), through the limited protocol with ``settings``'
    bounds. Signals are left to the service."""
    app: ASGIApp = create_app(service, settings.refresh_token)
    if tracer_provider is not None:
        app = trace_asgi(app, tracer_provider)
    return _EmbeddedServer(
        uvicorn.Config(
            app,
            host=settings.fetcher_host,
            port=settings.fetcher_port,
            http=limited_protocol(
                settings.http_max_request_head_bytes,
                settings.http_request_timeout_seconds,
                settings.http_new_connection_timeout_seconds,
                count=_count_refusal,
            ),
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            log_level="warning",
            lifespan="off",
            access_log=False,
            headers=list(SERVER_HEADERS),
            server_header=False,
        )
    )


def _count_refusal(status: int) -> None:
    INVALID_REQUESTS.labels(status=str(status)).inc()
