"""Applications for ``make bench`` only (never deployed).

- ``app``: the real api as ``covid_stats_api.main`` serves it (request metrics included) plus
  ``/bench/naive``, the original example's path: Redis GET, ``json.loads``, return the dict
  (FastAPI encodes it). Same app, same server flags.
- ``bare``: the ceiling, a bare ASGI callable returning constant bytes by path: the documents
  listed in the JSON file named by ``BENCH_DOCUMENTS`` (``{path: {"file": ..., "content_type":
  ...}}``, written by the bench from what the api serves; nginx serves the same files), read
  once at start-up; any other path is an empty 404.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.types import Receive, Scope, Send

from covid_stats_api.main import create_app, create_asgi

# The documents' plain JSON, written by the bench for the naive path to read.
NAIVE_KEYS = {"us": "bench:naive:us-current", "states": "bench:naive:states-current"}

_api = create_app()


@_api.get("/bench/naive", include_in_schema=False)
async def naive(request: Request) -> dict[str, Any]:
    raw = await request.app.state.api.stores.redis.get(NAIVE_KEYS["us"])
    return {"source": "cache", "data": json.loads(raw)}


@_api.get("/bench/naive-states", include_in_schema=False)
async def naive_states(request: Request) -> Any:
    raw = await request.app.state.api.stores.redis.get(NAIVE_KEYS["states"])
    return json.loads(raw)


# The api as it is served (request metrics, the fast path; the rate limit and tracing as
# configured: off by default), with the naive routes added.
app = create_asgi(api=_api)


def _documents() -> dict[str, tuple[bytes, list[tuple[bytes, bytes]]]]:
    manifest = os.environ.get("BENCH_DOCUMENTS")
    if not manifest:
        return {}
    table = {}
    for path, entry in json.loads(Path(manifest).read_text()).items():
        body = Path(entry["file"]).read_bytes()
        headers = [
            (b"content-type", entry["content_type"].encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        table[path] = (body, headers)
    return table


_DOCUMENTS = _documents()
_NOT_FOUND: tuple[bytes, list[tuple[bytes, bytes]]] = (b"", [(b"content-length", b"0")])


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    found = _DOCUMENTS.get(scope["path"])
    body, headers = found or _NOT_FOUND
    await send({"type": "http.response.start", "status": 200 if found else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})
