"""The api's error handlers, and its errors in the OpenAPI document.

Every error body has the one shape both services share (``covid_stats_runtime.http``):
``{"error": {"status": <int>, "code": <str>, "message": <str>}}``, plus ``"parameter"``
when one request parameter is at fault. Nothing a client sends produces a 500:
an unexpected exception is logged and answered with this shape, without internals.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from covid_stats_runtime import http
from covid_stats_runtime.http import ErrorBody, ErrorDetail

log = structlog.get_logger("covid_stats_api.errors")


class ApiError(Exception):
    """Raise from a route to answer with the error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = ErrorDetail(status=status, code=code, message=message, parameter=parameter)
        self.headers = headers


def no_data(retry_after_seconds: int) -> ApiError:
    return ApiError(
        503,
        "no_data",
        "No data is available yet: the stats-fetcher has not published any, or the stores "
        "are unreachable. Retry later.",
        headers={"Retry-After": str(retry_after_seconds)},
    )


def error_detail_response(detail: ErrorDetail, headers: dict[str, str] | None = None) -> Response:
    return http.starlette_error_response(
        detail.status, detail.code, detail.message, detail.parameter, headers
    )


# Documented on every route that can answer with the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Not found"},
    422: {"model": ErrorBody, "description": "A parameter is malformed; `parameter` names it"},
    # Answered by the server before any route (serving.server.uvicorn_adapter, the rate limit).
    414: {"model": ErrorBody, "description": "The request line is over the head size limit"},
    429: {
        "model": ErrorBody,
        "description": "Over RATE_LIMIT_PER_MINUTE (when set); retry after `Retry-After` seconds",
    },
    431: {"model": ErrorBody, "description": "The headers are over the head size limit"},
    503: {
        "model": ErrorBody,
        "description": "No data yet; retry after the `Retry-After` header's seconds",
    },
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_detail_response(exc.detail, exc.headers)

    app.add_exception_handler(StarletteHTTPException, http.http_error_response)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        parameter = location[-1] if len(location) > 1 else None
        message = f"Invalid {location[0] if location else 'request'} parameter"
        message += f" '{parameter}': {first.get('msg', 'invalid value')}" if parameter else ""
        detail = ErrorDetail(
            status=422, code="invalid_parameter", message=message, parameter=parameter
        )
        return error_detail_response(detail)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        detail = ErrorDetail(status=500, code="internal_error", message="Internal server error")
        return error_detail_response(detail)
