"""The routes' declarations: a date in a path cannot shadow a route declared after it, every
v1 route sits under the router's ``/v1`` prefix, route labels (metrics, spans, the fast path's
table) are the OpenAPI paths, and the OpenAPI components are the models the routes refer to.

In process: the app's own routers, no server (what is checked is how the routes match and
what the app documents, not what they answer; the api suites run them under gunicorn).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute, Match

from covid_stats_api.api import params
from covid_stats_api.api.params import DateConvertor
from covid_stats_api.api.responses import SchemaRef, referenced_models
from covid_stats_api.api.routes import changes, revisions, v1
from covid_stats_api.main import RECORD_MODELS, ROUTERS, ROUTES, create_app
from covid_stats_api.serving.asgi.fastpath import document_paths
from covid_stats_api.serving.asgi.request_metrics import route_of
from covid_stats_contract.documents import STATE_PLACEHOLDER, document_families


@functools.cache
def _openapi() -> dict[str, Any]:
    return create_app().openapi()


def _answering(routes: list[BaseRoute], path: str) -> BaseRoute | None:
    """The route that answers a GET of ``path``: the first that matches, as the router picks."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    return next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)


def _date_routes() -> list[APIRoute]:
    return [r for r in ROUTES if isinstance(r, APIRoute) and "{date" in r.path]


def test_a_route_declared_after_the_date_route_is_reached() -> None:
    """An app with the same routers and one route more, declared after every v1 route (so
    after ``/v1/us/{date}.{fmt}``), answers its path: the date route does not take it."""
    extra = APIRouter(prefix=v1.router.prefix)

    @extra.get("/us/zzz.json")
    async def zzz() -> dict[str, str]:
        return {"reached": "zzz"}

    app = FastAPI()
    for router in (*ROUTERS, extra):
        app.include_router(router)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    response = asyncio.run(get("/v1/us/zzz.json"))
    assert (response.status_code, response.json()) == (200, {"reached": "zzz"})
    routes = [*ROUTES, *extra.routes]
    assert _answering(routes, "/v1/us/zzz.json") is extra.routes[0]
    for path in ("/v1/states/ca/zzz.json", "/v1/us/summary.csv"):
        assert _answering(list(ROUTES), path) is None, path  # 404, not a malformed date


def test_date_routes_take_date_segments_only() -> None:
    dates = _date_routes()
    assert [r.path_format for r in dates[::2]] == [
        "/v1/us/{date}.{fmt}",
        "/v1/states/{state}/{date}.{fmt}",
    ]
    assert all(isinstance(r.param_convertors["date"], DateConvertor) for r in dates)
    for segment in ("20200401", "2020-04-01", "2020-13-45", "20201345", "2020041"):
        for prefix in ("/v1/us/", "/v1/states/ca/"):
            route = _answering(list(ROUTES), f"{prefix}{segment}.json")
            assert route in dates, segment  # a date attempt: the route answers 422 or the day
    for segment in ("current", "daily", "derived", "zzz", "-20200401", "x2020"):
        route = _answering(list(ROUTES), f"/v1/us/{segment}.json")
        assert route not in dates, segment


ROUTERS_OF_V1 = (v1.router, revisions.router, changes.router)


def test_every_v1_route_is_under_the_prefix() -> None:
    # the /v1 routers (the upstream's paths, the revisions, the changes feed) hold every
    # /v1 path, and no other router has one
    prefixed = [router for router in ROUTERS if router.prefix == "/v1"]
    assert all(any(r is router for r in prefixed) for router in ROUTERS_OF_V1)
    routes = [r for router in prefixed for r in router.routes if isinstance(r, APIRoute)]
    paths = {r.path for r in routes}
    assert paths
    assert all(p.startswith("/v1/") for p in paths)
    others = [r for router in ROUTERS if router.prefix != "/v1" for r in router.routes]
    assert not [r.path for r in others if isinstance(r, APIRoute) and r.path.startswith("/v1")]
    assert {p for p in _openapi()["paths"] if p.startswith("/v1/")} == {
        r.path_format for r in routes
    }


def test_route_labels_are_the_openapi_paths() -> None:
    """The metrics' and spans' route label of every route FastAPI answers, and of every
    document the fast path answers, is its OpenAPI path: no convertor in it."""
    documented = set(_openapi()["paths"])
    for route in ROUTES:
        if isinstance(route, APIRoute) and route.include_in_schema:
            assert route_of({"route": route}) in documented, route.path
    assert route_of({"route": _date_routes()[0]}) == "/v1/us/{date}.{fmt}"
    paths = document_paths(ROUTES)
    for name in document_families():
        resolved = paths.resolve("/" + name.replace(STATE_PLACEHOLDER, "ca"))
        assert resolved is not None, name
        assert resolved[1] in documented, name


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value))
    return set()


def test_the_components_are_the_models_the_routes_refer_to() -> None:
    spec = _openapi()
    components = spec["components"]["schemas"]
    prefix = "#/components/schemas/"
    referred = {ref.removeprefix(prefix) for ref in _refs(spec["paths"])}
    assert referred <= set(components)  # every $ref resolves
    assert _refs(components) <= {prefix + name for name in components}
    record_models = {model.__name__ for model in RECORD_MODELS}
    assert record_models == {"UsRecord", "StateRecord", "StateInfo", "DerivedRecord", "Status"}
    assert record_models <= referred
    for model in RECORD_MODELS:  # served as records: every field optional, more allowed
        assert components[model.__name__]["additionalProperties"] is True


def test_a_model_a_route_refers_to_is_a_component_by_itself() -> None:
    class Extra(BaseModel):
        value: int

    router = APIRouter()

    @router.get(
        "/extra", responses={200: {"content": {"application/json": {"schema": SchemaRef(Extra)}}}}
    )
    async def extra() -> None:
        return None

    assert referenced_models([*ROUTES, *router.routes]) == (*RECORD_MODELS, Extra)
    assert SchemaRef(Extra) == {"$ref": "#/components/schemas/Extra"}


# The /v1 paths that refuse as_of (422 naming it): histories already, or the data held now.
NOT_AS_OF = {
    "/v1/status.json",
    "/v1/us/revisions.{fmt}",
    "/v1/states/{state}/revisions.{fmt}",
    "/v1/changes.json",
}


def test_openapi_describes_as_of_on_every_v1_path() -> None:
    """Every v1 document path documents ``as_of`` as an answer as of an instant; the paths
    that refuse it say so."""
    paths = {p: item for p, item in _openapi()["paths"].items() if p.startswith("/v1/")}
    assert NOT_AS_OF.issubset(paths)
    assert len(paths) > len(NOT_AS_OF)
    for path, item in paths.items():
        for method in ("get", "head"):
            parameters = {p["name"]: p for p in item[method]["parameters"]}
            as_of = parameters.get(params.AS_OF)
            assert as_of is not None, (path, method)
            assert as_of["in"] == "query"
            assert not as_of.get("required")
            described = as_of.get("description") or as_of["schema"].get("description")
            if path in NOT_AS_OF:
                assert described.startswith("Not accepted here"), path
            else:
                assert described == params.AS_OF_DESCRIPTION, path
