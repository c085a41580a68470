"""``make profile``: what a hot document costs the api per request, layer by layer, in process.

The api's ASGI stack as ``covid_stats_api.main.create_asgi`` builds it (request metrics in
multiprocess mode, writing to a throwaway ``PROMETHEUS_MULTIPROC_DIR``; the rate limit when
``--rate-limit`` is given; no tracing) is driven by a loop of synthetic GET requests, with no
network, no HTTP parser and no event loop wake-ups: what is left is our code's own time per
request, compared with a bare ASGI callable sending the same bytes. Each layer is measured
alone too (the fast path without the metrics layer), then ``cProfile`` lists where the full
stack's time goes.

The hot tier is filled with ``/v1/us/current.json`` and ``/v1/states/current.json`` of the
archive (or small synthetic bodies without it) with their gzip and Brotli forms, as the
fetcher publishes them. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "covidtracking"
ARCHIVE = SHARED / "ctp_v1_api_snapshot_20200902"

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _documents() -> dict[str, bytes]:
    names = {
        "v1/us/current.json": "us_current.json",
        "v1/states/current.json": "states_current.json",
    }
    if ARCHIVE.is_dir():
        return {name: (ARCHIVE / file).read_bytes() for name, file in names.items()}
    return {
        "v1/us/current.json": b'[{"date":20200901,"positive":6000000}]\n' * 8,
        "v1/states/current.json": b'[{"state":"AK","positive":1}]\n' * 2000,
    }


def _scope(path: str, accept_encoding: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"accept-encoding", accept_encoding),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _per_request(app: Asgi, scope: dict[str, Any], requests: int) -> float:
    """Seconds per request of ``app`` answering ``scope`` (best of 5 runs)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        best = min(best, (time.perf_counter() - started) / requests)
    if set(sent) != {200}:
        raise SystemExit(f"unexpected statuses {set(sent)}: the document was not served")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="profile", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="per run (default 20000)")
    parser.add_argument("--rate-limit", type=int, default=0, help="RATE_LIMIT_PER_MINUTE")
    parser.add_argument("--top", type=int, default=25, help="cProfile lines (default 25)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="covid-stats-profile-") as metrics_dir:
        # Before prometheus_client is imported: the metrics write memory-mapped files, as in
        # the served api.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ.setdefault("RATE_LIMIT_PER_MINUTE", str(args.rate_limit))
        return _profile(args)


def _profile(args: argparse.Namespace) -> int:
    from covid_stats_api.core.config import Settings
    from covid_stats_api.main import create_asgi
    from covid_stats_api.serving.asgi.fastpath import FastPath
    from covid_stats_api.serving.asgi.request_metrics import RequestMetrics
    from covid_stats_contract.documents import JSON_CONTENT_TYPE, compress, compress_br, etag_for

    settings = Settings()
    served: Any = create_asgi(settings, tracer_provider=None)
    layers: list[tuple[str, Any]] = []
    app: Any = served
    while True:
        layers.append((type(app).__name__, app))
        if isinstance(app, FastPath):
            break
        app = app.app
    fast: FastPath = app
    for name, body in _documents().items():
        fast.hot.put(name, body, compress(body), compress_br(body), etag_for(body),
                     JSON_CONTENT_TYPE, "cache", "1")  # fmt: skip

    print(f"# the api's ASGI stack in process ({sys.version.split()[0]}, {args.requests:,} "
          f"requests per run, best of 5); stack: {' > '.join(n for n, _ in layers)}\n")  # fmt: skip
    print("| document | accept-encoding | bare ASGI µs | fast path µs | served stack µs | "
          "stack - bare µs |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for path in ("/v1/us/current.json", "/v1/states/current.json"):
        for accept in (b"identity", b"gzip", b"gzip, deflate, br"):
            scope = _scope(path, accept)
            entry = fast.hot.get(path[1:])
            assert entry is not None
            _, headers, body = entry.choose(scope["headers"])
            bare = _bare(headers, body)
            timings = [
                asyncio.run(_per_request(app, scope, args.requests)) for app in (bare, fast, served)
            ]
            micro = [t * 1e6 for t in timings]
            print(f"| {path} | {accept.decode()} | {micro[0]:.2f} | {micro[1]:.2f} | "
                  f"{micro[2]:.2f} | {micro[2] - micro[0]:.2f} |")  # fmt: skip

    scope = _scope("/v1/us/current.json", b"gzip, deflate, br")
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_per_request(served, scope, args.requests))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(args.top)
    print(f"\n## where the served stack's time goes (cProfile, {RequestMetrics.__name__} and "
          f"below, tottime)\n")  # fmt: skip
    print(out.getvalue())
    return 0


def _bare(headers: list[tuple[bytes, bytes]], body: bytes) -> Asgi:
    """A bare ASGI callable sending these headers and bytes: the ceiling."""

    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return bare


if __name__ == "__main__":
    raise SystemExit(main())
