"""Servable resources: the bytes of a path with the headers a GET of it returns.

Every path of :func:`~replay_upstream.dataset.api_paths` becomes a :class:`Resource` once, when
the app is created, with its ETag (a SHA-256 of the bytes), ``Content-Length``, ``Last-Modified``
(fixed per dataset) and ``Access-Control-Allow-Origin: *``. Fault injection builds changed
resources with the same helpers (:func:`resource`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate

from starlette.responses import Response

from replay_upstream.dataset import Dataset, api_paths

JSON = "application/json"
CSV = "text/csv; charset=utf-8"
BODY_HEADERS = frozenset({"Content-Type", "Content-Length"})
"""Headers that describe a body, left out of 304 answers."""


@dataclass(frozen=True)
class Resource:
    """One servable path: its bytes, the headers a GET of it returns, and its status."""

    body: bytes
    headers: Mapping[str, str]
    status: int = 200

    def response(self, *, head: bool = False) -> Response:
        """The full response (headers only for HEAD)."""
        return Response(b"" if head else self.body, self.status, headers=self.headers)


def etag(body: bytes) -> str:
    """The strong ETag of some bytes."""
    return f'"{hashlib.sha256(body).hexdigest()[:40]}"'


def http_date(moment: datetime) -> str:
    """An HTTP date (``Wed, 02 Sep 2020 04:23:12 GMT``)."""
    return formatdate(moment.timestamp(), usegmt=True)


def resource(body: bytes, content_type: str, last_modified: str) -> Resource:
    """A 200 resource with the replay's usual headers; ``last_modified`` is an HTTP date."""
    return Resource(
        body=body,
        headers={
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "ETag": etag(body),
            "Last-Modified": last_modified,
            "Access-Control-Allow-Origin": "*",
        },
    )


def build_resources(dataset: Dataset) -> dict[str, Resource]:
    """API path -> resource, for every path the dataset allows."""
    last_modified = http_date(dataset.last_modified)
    return {
        path: resource(body, CSV if path.endswith(".csv") else JSON, last_modified)
        for path, body in api_paths(dataset).items()
    }


def error_body(message: str, path: str, **extra: object) -> bytes:
    """The small JSON body of an error answer: ``{"error":...,"path":...}`` plus a newline."""
    value = {"error": message, "path": path, **extra}
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


def error_resource(
    status: int, message: str, path: str, headers: Mapping[str, str] | None = None
) -> Resource:
    """An error answer as a resource (JSON body, CORS header, ``headers`` added)."""
    body = error_body(message, path)
    return Resource(
        body=body,
        headers={
            "Content-Type": JSON,
            "Content-Length": str(len(body)),
            "Access-Control-Allow-Origin": "*",
            **(headers or {}),
        },
        status=status,
    )
