"""The Starlette app serving a dataset like the CTP v1 API did.

Every path of :func:`~replay_upstream.dataset.api_paths` is built once, when the app is created,
with its ETag (a SHA-256 of the bytes); requests only look bytes up. GET and HEAD are served with
``Content-Length``, ``ETag``, ``Last-Modified`` (fixed per dataset) and
``Access-Control-Allow-Origin: *``; ``If-None-Match`` and ``If-Modified-Since`` get 304 when they
match. State codes in per-state paths are accepted in any case (``/v1/states/CA/daily.json``).
Unknown paths get 404 with a small JSON body; OPTIONS answers CORS preflights; other methods 405.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from replay_upstream.dataset import Dataset, api_paths

JSON = "application/json"
CSV = "text/csv; charset=utf-8"
ALLOWED = "GET, HEAD, OPTIONS"
_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
_STATE_PATH = re.compile(r"/v1/states/([A-Za-z]{2})/(.+)")
_BODY_HEADERS = frozenset({"Content-Type", "Content-Length"})
_PREFLIGHT = {
    "Allow": ALLOWED,
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": ALLOWED,
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Max-Age": "86400",
}


@dataclass(frozen=True)
class Resource:
    """One servable path: its bytes and the headers a GET of it returns."""

    body: bytes
    headers: Mapping[str, str]


def build_resources(dataset: Dataset) -> dict[str, Resource]:
    """API path -> resource, for every path the dataset allows."""
    last_modified = formatdate(dataset.last_modified.timestamp(), usegmt=True)
    return {
        path: Resource(
            body=body,
            headers={
                "Content-Type": CSV if path.endswith(".csv") else JSON,
                "Content-Length": str(len(body)),
                "ETag": f'"{hashlib.sha256(body).hexdigest()[:40]}"',
                "Last-Modified": last_modified,
                "Access-Control-Allow-Origin": "*",
            },
        )
        for path, body in api_paths(dataset).items()
    }


def create_app(dataset: Dataset) -> Starlette:
    """An ASGI app serving ``dataset``; all bytes are built here, before the first request."""
    resources = build_resources(dataset)
    last_modified = dataset.last_modified

    async def serve(request: Request) -> Response:
        method = request.method
        if method == "OPTIONS":
            return Response(status_code=204, headers=_PREFLIGHT)
        if method not in ("GET", "HEAD"):
            return _error(405, "method not allowed", request.url.path, {"Allow": ALLOWED})
        resource = _lookup(resources, request.url.path)
        if resource is None:
            return _error(404, "not found", request.url.path)
        if _not_modified(request, resource, last_modified):
            headers = {k: v for k, v in resource.headers.items() if k not in _BODY_HEADERS}
            return Response(status_code=304, headers=headers)
        body = b"" if method == "HEAD" else resource.body
        return Response(body, headers=resource.headers)

    app = Starlette(routes=[Route("/{path:path}", serve, methods=_METHODS)])
    app.state.dataset = dataset
    app.state.paths = frozenset(resources)
    return app


def _lookup(resources: Mapping[str, Resource], path: str) -> Resource | None:
    found = resources.get(path)
    if found is None and (match := _STATE_PATH.fullmatch(path)):
        found = resources.get(f"/v1/states/{match[1].lower()}/{match[2]}")
    return found


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


def _error(
    status: int, message: str, path: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps({"error": message, "path": path}, separators=(",", ":")) + "\n"
    return Response(
        body.encode(),
        status_code=status,
        headers={"Access-Control-Allow-Origin": "*", **(headers or {})},
        media_type=JSON,
    )
