"""What each injected fault does to the answer of a GET (see :mod:`replay_upstream.control`).

``normal`` is what the path serves without conditional headers (its resource, or the 404 of an
unknown path). Faults take precedence over conditional requests, except ``not_modified``, and
``delay`` then answers as usual (conditional headers included):

- ``status``: ``status`` with a small JSON body (and ``Retry-After`` if ``retry_after`` is set);
- ``delay``: wait ``seconds`` (``asyncio.sleep``: other requests are served meanwhile), then the
  usual answer; a client that gives up (times out) ends the wait, unanswered;
- ``truncate``: the normal status and headers, full ``Content-Length`` included, then the first
  half of the body and the connection is closed (:class:`TruncatedResponse`);
- ``empty``: ``[]`` as JSON, with its own ETag;
- ``schema``: the normal body with ``positive`` renamed ``positiveCases`` and ``date`` turned
  into ``"YYYY-MM-DD"`` in every record (JSON and CSV alike), with its own ETag;
- ``content_type``: the normal body with ``Content-Type: text/html``;
- ``not_modified``: 304, whatever the request carries;
- ``body``: 200 with the fault's JSON ``body`` (compact, plus a newline, like the upstream's JSON)
  as ``application/json``, with its own ETag.

Changed bodies have ``Last-Modified`` = the time the fault was set.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from replay_upstream.control import Fault
from replay_upstream.formats import dump_json_array, dump_json_object
from replay_upstream.resources import BODY_HEADERS, CSV, JSON, Resource, error_body, http_date
from replay_upstream.resources import resource as make_resource

_POLL = 0.05
"""How often a delay checks whether its client is still connected, in seconds."""

RENAMED = ("positive", "positiveCases")
"""The ``schema`` fault's renamed field (old, new)."""


class TruncatedResponse(Response):
    """Status and headers with the full ``Content-Length``, then half the body, then nothing.

    The app returns without the final body message: uvicorn then logs "ASGI callable returned
    without completing response." and closes the connection, so the client sees a body shorter
    than announced (httpx raises ``RemoteProtocolError``).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        half = bytes(self.body[: len(self.body) // 2])
        await send({"type": "http.response.body", "body": half, "more_body": True})


async def faulty_response(
    fault: Fault, request: Request, normal: Resource, usual: Callable[[], Response]
) -> Response | None:
    """The answer to a GET under ``fault``; ``usual()`` gives the unfaulted one.

    None when the client went away during a delay (there is no one left to answer).
    """
    kind, path = fault.kind, request.url.path
    if kind == "delay":
        return usual() if await _wait(fault.seconds, request) else None
    if kind == "status":
        body = error_body("injected fault", path, status=fault.status)
        headers = {"Access-Control-Allow-Origin": "*"}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return Response(body, fault.status, headers=headers, media_type=JSON)
    if kind == "not_modified":
        headers = {k: v for k, v in normal.headers.items() if k not in BODY_HEADERS}
        return Response(status_code=304, headers=headers)
    if kind == "truncate":
        return TruncatedResponse(normal.body, normal.status, headers=normal.headers)
    if kind == "content_type":
        return Response(
            normal.body, normal.status, headers={**normal.headers, "Content-Type": "text/html"}
        )
    since = http_date(fault.since)
    if kind == "empty":
        return make_resource(dump_json_array([]), JSON, since).response()
    if kind == "body":
        return make_resource(fault.body, JSON, since).response()
    if kind == "schema":
        changed = changed_schema(normal.body, csv_body=normal.headers.get("Content-Type") == CSV)
        if changed == normal.body:
            return normal.response()
        content_type = normal.headers.get("Content-Type", JSON)
        return make_resource(changed, content_type, since).response()
    raise ValueError(f"unknown fault kind {kind!r}")


async def _wait(seconds: float, request: Request) -> bool:
    """Sleep ``seconds`` unless the client disconnects first; whether it is still there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(left, _POLL))
        if await request.is_disconnected():
            return False
    return True


def changed_schema(body: bytes, *, csv_body: bool) -> bytes:
    """``body`` with ``positive`` renamed and ``date`` as ``"YYYY-MM-DD"`` in every record."""
    if csv_body:
        return _changed_csv(body)
    try:
        value = json.loads(body)
    except ValueError:
        return body
    if isinstance(value, list):
        return dump_json_array([_changed_record(v) if isinstance(v, dict) else v for v in value])
    if isinstance(value, dict):
        return dump_json_object(_changed_record(value))
    return body


def _changed_record(record: dict[str, Any]) -> dict[str, Any]:
    old, new = RENAMED
    return {
        (new if key == old else key): (_iso_date(value) if key == "date" else value)
        for key, value in record.items()
    }


def _iso_date(value: object) -> object:
    text = str(value)
    if isinstance(value, bool) or not isinstance(value, int | str) or not text.isdigit():
        return value
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 else value


def _changed_csv(body: bytes) -> bytes:
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    if not rows:
        return body
    old, new = RENAMED
    header = [new if name == old else name for name in rows[0]]
    dates = [i for i, name in enumerate(header) if name == "date"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows[1:]:
        writer.writerow([_iso_date(cell) if i in dates else cell for i, cell in enumerate(row)])
    return out.getvalue().encode("utf-8")
