"""HTTP semantics of every data response: ETag, Cache-Control, 304, gzip, CORS, and where
the body came from (the fast path in ``fastpath`` sends the same headers).

``If-None-Match`` is compared with the body's ETag (a list of tags and ``*`` are understood,
weak tags compare by their opaque part); a match answers 304 with no body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from covid_stats_api.reads.documents import Served
from covid_stats_api.reads.hot import etag_matches, gzip_etag


def send(request: Request, served: Served, max_age: int) -> Response:
    headers = {
        "ETag": served.etag,
        "Cache-Control": f"public, max-age={max_age}",
        "X-Data-Source": served.source,
        "Access-Control-Allow-Origin": "*",
        "Vary": "Accept-Encoding",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, served.etag):
        return Response(status_code=304, headers=headers)
    if served.gzip and "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        headers["ETag"] = gzip_etag(served.etag)
        return Response(content=served.gzip, media_type=served.content_type, headers=headers)
    return Response(content=served.body, media_type=served.content_type, headers=headers)


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def get_and_head(router: APIRouter, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Register an endpoint for GET and HEAD as two routes, so that each OpenAPI operation has
    its own ``operationId`` (one route with both methods would give both the same id)."""

    def register(endpoint: Endpoint) -> Endpoint:
        for method, name in (("GET", endpoint.__name__), ("HEAD", f"{endpoint.__name__}_head")):
            router.add_api_route(
                path, endpoint, methods=[method], name=name, response_class=Response, **options
            )
        return endpoint

    return register
