"""The fetcher's own HTTP port: probes, metrics, and ``POST /refresh``.

- ``GET /healthz``: the process answers (checks nothing else).
- ``GET /readyz``: Redis and PostgreSQL answer; the body also says whether this replica
  leads. 503 when either store is unreachable.
- ``GET /metrics``: Prometheus text format.
- ``POST /refresh``: asks the leader (whichever replica it is) to refresh now. Needs
  ``Authorization: Bearer <REFRESH_TOKEN>``: 401 without or with a wrong token (compared in
  constant time); 403 when no token is configured (the endpoint is off); 202 when accepted.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from stats_fetcher.service import FetcherService


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    body = {"error": {"status": status, "code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def create_app(service: FetcherService) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks: dict[str, Any] = await service.check_stores()
        ready = checks["redis"] == "ok" and checks["postgres"] == "ok"
        body = {"status": "ready" if ready else "unavailable", **checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def refresh(request: Request) -> Response:
        token = service.settings.refresh_token
        if token is None:
            return _error(403, "disabled", "POST /refresh is off: no REFRESH_TOKEN is configured")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            return _error(
                401,
                "unauthorized",
                "a valid bearer token is required",
                **{"WWW-Authenticate": "Bearer"},
            )
        if not await service.request_refresh():
            return _error(503, "unavailable", "Redis is unreachable: cannot reach the leader")
        return JSONResponse({"status": "accepted"}, status_code=202)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/refresh", refresh, methods=["POST"]),
        ]
    )
