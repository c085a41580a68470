"""How the routes answer: a data answer (``send``: ETag, Cache-Control, 304, gzip, CORS and
where the body came from, all built by ``covid_stats_runtime.http``, as the fast path's), and
the GET + HEAD registration of every route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import Response

from covid_stats_api.reads.documents import Served
from covid_stats_runtime.http import Representation, RepresentationResponse, data_headers


def send(served: Served, max_age: int) -> Response:
    """``served`` as the fast path would send it from memory: the same representation
    (``covid_stats_runtime.http``), so the same status, headers and bytes."""
    common = data_headers(max_age, served.source)
    return RepresentationResponse(
        Representation.build(
            served.body, served.gzip, served.br, served.etag, served.content_type, common
        )
    )


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
