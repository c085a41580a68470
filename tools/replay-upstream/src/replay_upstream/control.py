"""The control API (``--control``): faults to inject and counts of the requests served.

Tests of a client (the stats-fetcher) use it to make the upstream misbehave on purpose and to see
what the client asked for, over HTTP, against the real server:

- ``PUT /_control/faults`` with ``{"path": "/v1/states/current.json", "fault": KIND, ...,
  "times": N}`` sets the fault of GETs of that exact path (case-sensitive, as requested; a new
  PUT for the path replaces its fault). ``times`` (an integer >= 1) applies it to that many GETs,
  after which it clears itself; absent or ``null``: until cleared. Kinds and their parameters
  are in :data:`FAULT_PARAMS`; unknown keys are rejected (400), so are invalid values.
- ``GET /_control/faults``: the faults in force, ``{path: {"fault": KIND, ..., "times": left}}``.
- ``DELETE /_control/faults``: clear all faults (204).
- ``GET /_control/requests``: ``{path: {"total": n, "conditional": n, "status": {"200": n}}}``
  for the GET and HEAD requests of every other path (control paths are not counted);
  ``conditional`` counts requests carrying ``If-None-Match`` or ``If-Modified-Since``; ``total``
  counts a request as it arrives, ``status`` as it is answered (a client that left during a
  ``delay`` is never answered).
- ``DELETE /_control/requests``: reset the counts (204).
- ``GET /_control/edition`` (served whenever the server serves editions, ``--editions``,
  ``--ctp-editions``, with or without ``--control``: :func:`edition_endpoint`):
  ``{"edition": n, "editions": N, "folders": [...], "last_modified": ...}``;
  ``POST /_control/edition``: serve the next edition (409 at the last one);
  ``PUT /_control/edition`` with ``{"edition": n}``: serve edition n (1..N). Both answer
  once the edition's bytes are served, with the GET's body. Without editions: 404.

What each kind does to a response is in :mod:`replay_upstream.faults`. This module keeps the
state (:class:`Control`) and answers the control paths (:func:`control_endpoint`).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from replay_upstream.dataset import Dataset
from replay_upstream.editions import Editions
from replay_upstream.resources import JSON, error_resource

CONTROL_PREFIX = "/_control/"
FAULTS_PATH = "/_control/faults"
REQUESTS_PATH = "/_control/requests"
EDITION_PATH = "/_control/edition"

FAULT_PARAMS: Mapping[str, frozenset[str]] = {
    "status": frozenset({"status", "retry_after"}),
    "delay": frozenset({"seconds"}),
    "truncate": frozenset(),
    "empty": frozenset(),
    "schema": frozenset(),
    "content_type": frozenset(),
    "not_modified": frozenset(),
    "body": frozenset({"body"}),
}
"""Fault kind -> the parameters it accepts besides ``path``, ``fault`` and ``times``."""

_REQUIRED = {"status": "status", "delay": "seconds", "body": "body"}
MAX_DELAY = 600.0
"""The longest ``delay`` accepted, in seconds."""


@dataclass
class Fault:
    """One injected fault; ``times`` is how many GETs it still applies to (None: unlimited)."""

    kind: str
    times: int | None = None
    status: int = 500
    retry_after: int | None = None
    seconds: float = 0.0
    body: bytes = b""
    since: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    """When it was set: the ``Last-Modified`` of the bodies it changes."""

    def describe(self) -> dict[str, Any]:
        """The fault as ``GET /_control/faults`` shows it (the PUT's keys but ``path``)."""
        view: dict[str, Any] = {"fault": self.kind}
        if self.kind == "status":
            view["status"] = self.status
            if self.retry_after is not None:
                view["retry_after"] = self.retry_after
        elif self.kind == "delay":
            view["seconds"] = self.seconds
        elif self.kind == "body":
            view["body"] = json.loads(self.body)
        view["times"] = self.times
        return view


@dataclass
class PathCounts:
    """The GET/HEAD requests of one path."""

    total: int = 0
    conditional: int = 0
    status: Counter[int] = field(default_factory=Counter)

    def describe(self) -> dict[str, Any]:
        statuses = {str(code): n for code, n in sorted(self.status.items())}
        return {"total": self.total, "conditional": self.conditional, "status": statuses}


class EditionSwitch:
    """Moves the server between its editions, one move at a time; ``serve`` makes a dataset
    the served one (it builds its bytes: run off the event loop)."""

    def __init__(self, editions: Editions, serve: Callable[[Dataset], None]) -> None:
        self.editions = editions
        self._serve = serve
        self._lock = asyncio.Lock()

    async def go_to(self, number: int) -> None:
        """Serve edition ``number``; ValueError when out of range."""
        async with self._lock:
            await asyncio.to_thread(self._go_to, number)

    def _go_to(self, number: int) -> None:
        self._serve(self.editions.go_to(number))


@dataclass
class Control:
    """The faults in force and the request counts of one server."""

    faults: dict[str, Fault] = field(default_factory=dict)
    requests: dict[str, PathCounts] = field(default_factory=dict)

    def take_fault(self, path: str) -> Fault | None:
        """The fault for a GET of ``path``, if any, using up one of its ``times``."""
        fault = self.faults.get(path)
        if fault is not None and fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self.faults[path]
        return fault

    def count_request(self, path: str, *, conditional: bool) -> None:
        """Count a GET/HEAD request of ``path`` as it arrives."""
        counts = self.requests.setdefault(path, PathCounts())
        counts.total += 1
        counts.conditional += conditional

    def count_status(self, path: str, status: int) -> None:
        """Count the status a request of ``path`` was answered with."""
        self.requests.setdefault(path, PathCounts()).status[status] += 1


def parse_fault(spec: object) -> tuple[str, Fault]:
    """The path and fault of a ``PUT /_control/faults`` body; ValueError says what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError('expected a JSON object like {"path": "/v1/...", "fault": "status", ...}')
    path, kind = spec.get("path"), spec.get("fault")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError('"path" must be a string starting with "/"')
    if not isinstance(kind, str) or kind not in FAULT_PARAMS:
        raise ValueError(f'"fault" must be one of {", ".join(FAULT_PARAMS)}')
    unknown = set(spec) - {"path", "fault", "times"} - FAULT_PARAMS[kind]
    if unknown:
        raise ValueError(f'unknown keys for fault "{kind}": {", ".join(sorted(unknown))}')
    required = _REQUIRED.get(kind)
    if required is not None and required not in spec:
        raise ValueError(f'fault "{kind}" needs "{required}"')
    fault = Fault(kind=kind, times=_optional_int(spec, "times", minimum=1))
    if kind == "status":
        fault.status = _int(spec["status"], "status", minimum=400, maximum=599)
        fault.retry_after = _optional_int(spec, "retry_after", minimum=0)
    elif kind == "delay":
        seconds = spec["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError('"seconds" must be a number')
        if not 0 <= seconds <= MAX_DELAY:
            raise ValueError(f'"seconds" must be between 0 and {MAX_DELAY:g}')
        fault.seconds = float(seconds)
    elif kind == "body":
        text = json.dumps(spec["body"], separators=(",", ":"), ensure_ascii=False)
        fault.body = (text + "\n").encode()
    return path, fault


def _optional_int(spec: Mapping[str, object], key: str, *, minimum: int) -> int | None:
    value = spec.get(key)
    return None if value is None else _int(value, key, minimum=minimum)


def _int(value: object, key: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'"{key}" must be an integer')
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f'"{key}" must be at least {minimum}{upper}')
    return value


async def control_endpoint(control: Control, request: Request) -> Response:
    """Answer a request of a ``/_control/...`` path."""
    path, method = request.url.path, request.method
    if path == FAULTS_PATH:
        if method == "PUT":
            return await _put_fault(control, request)
        if method == "GET":
            return _json({p: fault.describe() for p, fault in control.faults.items()})
        if method == "DELETE":
            control.faults.clear()
            return Response(status_code=204)
        return _not_allowed(path, "GET, PUT, DELETE")
    if path == REQUESTS_PATH:
        if method == "GET":
            return _json({p: counts.describe() for p, counts in control.requests.items()})
        if method == "DELETE":
            control.requests.clear()
            return Response(status_code=204)
        return _not_allowed(path, "GET, DELETE")
    return error_resource(404, "not found", path).response()


async def edition_endpoint(switch: EditionSwitch, request: Request) -> Response:
    """Answer a request of ``/_control/edition``."""
    method, editions = request.method, switch.editions
    if method == "GET":
        return _json(editions.describe())
    if method == "POST":
        if editions.number >= len(editions.folders):
            return error_resource(409, "already serving the last edition", EDITION_PATH).response()
        await switch.go_to(editions.number + 1)
        return _json(editions.describe())
    if method == "PUT":
        try:
            spec = json.loads(await request.body())
            if not isinstance(spec, dict) or set(spec) != {"edition"}:
                raise ValueError('expected {"edition": <number>}')
            number = _int(spec["edition"], "edition", minimum=1, maximum=len(editions.folders))
            await switch.go_to(number)
        except ValueError as error:
            return error_resource(400, str(error), EDITION_PATH).response()
        return _json(editions.describe())
    return _not_allowed(EDITION_PATH, "GET, POST, PUT")


async def _put_fault(control: Control, request: Request) -> Response:
    try:
        spec = json.loads(await request.body())
        path, fault = parse_fault(spec)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        return error_resource(400, str(error), FAULTS_PATH).response()
    control.faults[path] = fault
    return _json({"path": path, **fault.describe()})


def _json(value: object) -> Response:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n"
    return Response(body.encode(), media_type=JSON)


def _not_allowed(path: str, allowed: str) -> Response:
    return error_resource(405, "method not allowed", path, {"Allow": allowed}).response()
