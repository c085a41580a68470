"""How the routes answer: a data answer (``send``: ETag, Cache-Control, 304, gzip, CORS and
where the body came from, all built by ``covid_stats_runtime.http``, as the fast path's), and
the GET + HEAD registration of every route."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from covid_stats_api.reads.documents import Served
from covid_stats_runtime.http import (
    CachePolicy,
    Representation,
    RepresentationResponse,
    data_headers,
)


def send(served: Served, policy: CachePolicy, keys: Iterable[str]) -> RepresentationResponse:
    """``served`` as the fast path would send it from memory: the same representation
    (``covid_stats_runtime.http``), so the same status, headers and bytes; ``keys``: its
    surrogate keys (``covid_stats_contract.edge``)."""
    common = data_headers(policy, served.source, keys)
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


class SchemaRef(dict[str, str]):
    """A ``$ref`` to a model's schema in the OpenAPI document's components, as a route's
    ``responses`` name it; it holds the model, so the app's components are the models its
    routes refer to (``referenced_models``), never a list kept beside them."""

    def __init__(self, model: type[BaseModel]) -> None:
        super().__init__({"$ref": f"#/components/schemas/{model.__name__}"})
        self.model = model


def referenced_models(routes: Iterable[Any]) -> tuple[type[BaseModel], ...]:
    """Every model the routes' documented responses refer to (``SchemaRef``), in order."""
    found: dict[str, type[BaseModel]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, SchemaRef):
            known = found.setdefault(value.model.__name__, value.model)
            if known is not value.model:
                raise ValueError(f"two models are named {known.__name__}")
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for route in routes:
        if isinstance(route, APIRoute):
            walk(route.responses)
    return tuple(found.values())
