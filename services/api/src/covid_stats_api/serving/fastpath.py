"""The fast path: hot documents answered straight from the worker's memory.

A plain ASGI layer in front of the FastAPI app. A GET or HEAD of a published document's path
(no query string) whose entry is in the ``HotCache`` is answered here, without FastAPI's
routing, validation or dependency injection and without Redis: the prebuilt header list and
the bytes are sent as they are (the gzip body when the client accepts gzip; 304 when
``If-None-Match`` matches). Anything else, including every error, goes to FastAPI, so the
OpenAPI document and the error model stay whole: both paths answer the same request with the
same status, headers and bytes. The page and its assets (``page``), fixed bytes held in
memory from start-up, are answered here too, whatever their query string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from covid_stats_api.metrics import CACHE_LOOKUPS
from covid_stats_api.reads.hot import COVID_STATS, HotCache, HotEntry, etag_matches

_STATE_DOCUMENT = re.compile(r"^/v1/states/([A-Za-z]{2})/(current|daily|info)\.(json|csv)$")


def route_template(name: str) -> str:
    """The FastAPI route template a hot document's path belongs to (the metrics' label)."""
    if name == COVID_STATS:
        return "/covid-stats"
    if name.startswith("v1/states/") and name.count("/") == 3:
        kind = name.rsplit("/", 1)[1].split(".")[0]
        return f"/v1/states/{{state}}/{kind}.{{fmt}}"
    if name.endswith(".json") and name.count("/") == 1:  # v1/status.json
        return f"/{name}"
    return "/" + name.rsplit(".", 1)[0] + ".{fmt}"


def document_name(path: str) -> str | None:
    """The hot-cache key a path would be served from (state codes in any case)."""
    if path == "/covid-stats":
        return COVID_STATS
    if match := _STATE_DOCUMENT.match(path):
        return f"v1/states/{match[1].lower()}/{match[2]}.{match[3]}"
    if path.startswith("/v1/"):
        return path[1:]
    return None


class FastPath:
    def __init__(
        self, app: ASGIApp, hot: HotCache, static: Mapping[str, HotEntry] | None = None
    ) -> None:
        self.app = app
        self.hot = hot
        self.static = static or {}  # fixed answers by path (the page): any query string

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and (fixed := self.static.get(scope["path"])) is not None
        ):
            scope["route_template"] = scope["path"]
            await send_entry(scope, send, fixed)
            return
        if (
            scope["type"] == "http"
            and not scope["query_string"]
            and scope["method"] in ("GET", "HEAD")
            and (name := document_name(scope["path"])) is not None
        ):
            entry = self.hot.get(name)
            if entry is not None:
                stale = self.hot.version is not None and entry.version not in ("", self.hot.version)
                CACHE_LOOKUPS.labels("memory", "stale" if stale else "hit").inc()
                scope["route_template"] = route_template(name)
                await send_entry(scope, send, entry)
                return
            CACHE_LOOKUPS.labels("memory", "miss").inc()
        await self.app(scope, receive, send)


async def send_entry(scope: Scope, send: Send, entry: HotEntry) -> None:
    """Answer a GET or HEAD with an entry: 304 when ``If-None-Match`` names its tag, the gzip
    body when the client accepts it, else the body."""
    gzip_ok = False
    for key, value in scope["headers"]:
        if key == b"if-none-match" and etag_matches(value.decode("latin-1"), entry.etag):
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": entry.not_modified_headers,
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if key == b"accept-encoding" and b"gzip" in value:
            gzip_ok = True
    if gzip_ok and entry.gzip:
        headers, body = entry.gzip_headers, entry.gzip
    else:
        headers, body = entry.headers, entry.body
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
