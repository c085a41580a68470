"""The Starlette app serving a dataset like the CTP v1 API did.

Every path of :func:`~replay_upstream.dataset.api_paths` is built once, when the app is created
(:mod:`replay_upstream.resources`); requests only look bytes up. GET and HEAD are served with
``Content-Length``, ``ETag``, ``Last-Modified`` (fixed per dataset) and
``Access-Control-Allow-Origin: *``; ``If-None-Match`` and ``If-Modified-Since`` get 304 when they
match. State codes in per-state paths are accepted in any case (``/v1/states/CA/daily.json``).
Unknown paths get 404 with a small JSON body, whatever the method; OPTIONS answers CORS
preflights; other methods on known paths get 405.

With ``control=True`` the app also answers ``/_control/...`` (faults to inject, request counts:
:mod:`replay_upstream.control`); without it those paths are unknown paths like any other.

With ``github_raw=True`` it answers in the shape of the default upstream, GitHub's raw file
host serving the archived repository COVID19Tracking/covid-public-api: every path under
:data:`GITHUB_RAW_PREFIX` (``/COVID19Tracking/covid-public-api/HEAD/v1/...``; paths outside
it are unknown), every file as ``text/plain; charset=utf-8``, a strong ``ETag`` and 304 on
``If-None-Match``, no ``Last-Modified``. Faults and request counts keep the ``/v1/...`` paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from replay_upstream.control import (
    CONTROL_PREFIX,
    EDITION_PATH,
    Control,
    EditionSwitch,
    control_endpoint,
    edition_endpoint,
)
from replay_upstream.dataset import Dataset
from replay_upstream.editions import Editions
from replay_upstream.faults import faulty_response
from replay_upstream.resources import BODY_HEADERS, Resource, build_resources, error_resource

ALLOWED = "GET, HEAD, OPTIONS"
_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
_STATE_PATH = re.compile(r"/v1/states/([A-Za-z]{2})/(.+)")
GITHUB_RAW_PREFIX = "/COVID19Tracking/covid-public-api/HEAD"
"""Where raw.githubusercontent.com serves the archived CTP API files (HEAD: default branch)."""
GITHUB_RAW_CONTENT_TYPE = "text/plain; charset=utf-8"
"""The content type raw.githubusercontent.com gives every text file, .json and .csv alike."""
_PREFLIGHT = {
    "Allow": ALLOWED,
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": ALLOWED,
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Max-Age": "86400",
}


def create_app(
    dataset: Dataset,
    *,
    control: bool = False,
    github_raw: bool = False,
    editions: Editions | None = None,
) -> Starlette:
    """An ASGI app serving ``dataset``; all bytes are built here, before the first request.

    ``control``: also serve the control API (fault injection, request counts) under
    ``/_control/``; the app's ``state.control`` is then its :class:`Control` (else None).
    ``github_raw``: answer in raw.githubusercontent.com's shape (the module's docstring).
    ``editions``: the datasets served one after the other (``dataset`` is the current one);
    ``/_control/edition`` (with or without ``control``) moves between them, building the next
    edition's bytes before it replaces the current ones in one step.
    """
    resources = build_resources(dataset)
    last_modified = dataset.last_modified
    controller = Control() if control else None

    def serve_dataset(served: Dataset) -> None:  # in a thread: builds every path's bytes
        nonlocal resources, last_modified
        built = build_resources(served)
        last_modified = served.last_modified
        resources = built
        app.state.dataset = served
        app.state.paths = frozenset(built)

    switch = EditionSwitch(editions, serve_dataset) if editions is not None else None

    async def serve(request: Request) -> Response:
        response = await answer(request)
        return _as_github_raw(response) if github_raw else response

    async def answer(request: Request) -> Response:
        path, method = request.url.path, request.method
        if switch is not None and path == EDITION_PATH:
            return await edition_endpoint(switch, request)
        if controller is not None and path.startswith(CONTROL_PREFIX):
            return await control_endpoint(controller, request)
        if method == "OPTIONS":
            return Response(status_code=204, headers=_PREFLIGHT)
        if github_raw:  # the API's paths under the prefix; any other path is unknown
            inside = path.startswith(f"{GITHUB_RAW_PREFIX}/")
            path = path.removeprefix(GITHUB_RAW_PREFIX) if inside else f"/unknown{path}"
        found = _lookup(resources, path)
        normal = found or error_resource(404, "not found", path)
        if method not in ("GET", "HEAD"):
            if found is None:
                return normal.response()
            return error_resource(405, "method not allowed", path, {"Allow": ALLOWED}).response()

        def usual() -> Response:
            if found is not None and _not_modified(request, found, last_modified):
                headers = {k: v for k, v in found.headers.items() if k not in BODY_HEADERS}
                return Response(status_code=304, headers=headers)
            return normal.response(head=method == "HEAD")

        if controller is None:
            return usual()
        controller.count_request(path, conditional=_conditional(request))
        fault = controller.take_fault(path) if method == "GET" else None
        response = (
            usual() if fault is None else await faulty_response(fault, request, normal, usual)
        )
        if response is None:  # the client left during a delay: nothing to answer or count
            return Response(status_code=499)
        controller.count_status(path, response.status_code)
        return response

    app = Starlette(routes=[Route("/{path:path}", serve, methods=_METHODS)])
    app.state.dataset = dataset
    app.state.prefix = GITHUB_RAW_PREFIX if github_raw else ""
    app.state.paths = frozenset(resources)
    app.state.control = controller
    return app


def _as_github_raw(response: Response) -> Response:
    """``response`` as raw.githubusercontent.com would send it: a JSON or CSV body as
    ``text/plain; charset=utf-8``, no ``Last-Modified``."""
    content_type = response.headers.get("content-type", "")
    if "json" in content_type or "csv" in content_type:
        response.headers["content-type"] = GITHUB_RAW_CONTENT_TYPE
    if "last-modified" in response.headers:
        del response.headers["last-modified"]
    return response


def _lookup(resources: Mapping[str, Resource], path: str) -> Resource | None:
    found = resources.get(path)
    if found is None and (match := _STATE_PATH.fullmatch(path)):
        found = resources.get(f"/v1/states/{match[1].lower()}/{match[2]}")
    return found


def _conditional(request: Request) -> bool:
    return "if-none-match" in request.headers or "if-modified-since" in request.headers


def _not_modified(request: Request, resource: Resource, last_modified: datetime) -> bool:
    """Whether the client's conditional headers say its copy is current (RFC 9110 13.2.2)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or resource.headers["ETag"] in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified <= since
