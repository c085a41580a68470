"""The fast path: hot documents answered straight from the worker's memory.

A plain ASGI layer in front of the FastAPI app. A GET or HEAD of a published document's path
(no query string) whose entry is in the ``HotCache`` is answered here, without FastAPI's
routing, validation or dependency injection and without Redis. Which document a path names,
and its route template, come from a table built at start-up from the contract's document
names and the app's own routes (``DocumentPaths``). The prebuilt header list and the bytes
are sent as they are (the gzip body when the client accepts gzip; 304 when
``If-None-Match`` matches). Anything else, including every error, goes to FastAPI, so the
OpenAPI document and the error model stay whole: both paths answer the same request with the
same status, headers and bytes. The page and its assets (``page``), fixed bytes held in
memory from start-up, are answered here too, whatever their query string. So are query
answers the worker keeps in memory (``reads.recent``), by the exact request target (path
and query string) that FastAPI answered them for: the same bytes and headers again.
``FastPath.find`` is the one place that decides: under gunicorn the HTTP protocol asks it
first and writes the answer itself (``direct``); this layer answers what reaches the app.
It is also where the path to route is settled (``routed_path``): an encoded slash (``%2F``)
stays encoded, part of its segment, for the fast path and FastAPI alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from covid_stats_api.reads.hot import COVID_STATS, HotCache, HotEntry
from covid_stats_api.reads.recent import RecentAnswers, current_request
from covid_stats_contract.documents import STATE_CODE_RE, STATE_PLACEHOLDER, document_families
from covid_stats_runtime.http import Representation, send_representation

# A code put in a family's name to ask the routes which one answers it (any valid code).
_SAMPLE_STATE = "zz"
_ENCODED_SLASH = re.compile(rb"%2f", re.IGNORECASE)


def routed_path(raw_path: bytes) -> str:
    """The path to route from the request's raw (percent-encoded) path: decoded as the
    server decodes it, except each ``%2F``, kept as the text ``%2F``: a slash sent encoded
    belongs to its segment and never separates two (uvicorn decodes it, so
    ``/v1/states/ca%2fcurrent.json`` would be routed as ``/v1/states/ca/current.json``).
    A query string some clients leave in ``raw_path`` (httpx's ASGI transport) is dropped."""
    path = raw_path.partition(b"?")[0]
    return "%2F".join(unquote(part.decode("latin-1")) for part in _ENCODED_SLASH.split(path))


@dataclass(frozen=True, slots=True)
class _StateFamily:
    name_prefix: str  # "v1/states/"
    name_suffix: str  # "/current.json"
    route: str  # "/v1/states/{state}/current.{fmt}"


class DocumentPaths:
    """Which hot document a path names, and the route template that answers it (the
    metrics' label): built at start-up from the contract's document names
    (``document_families``, plus the ``/covid-stats`` envelope) and the app's own routes, so
    no path or template is written here. A document whose path no route answers is an error
    at start-up."""

    def __init__(self, routes: Sequence[BaseRoute], names: Iterable[str]) -> None:
        self.exact: dict[str, tuple[str, str]] = {}  # path -> (document, route template)
        # path prefix before the state's code -> path after it -> the family
        self.by_state: dict[str, dict[str, _StateFamily]] = {}
        for name in names:
            before, placeholder, after = name.partition(STATE_PLACEHOLDER)
            route = _route_of(routes, "/" + name.replace(STATE_PLACEHOLDER, _SAMPLE_STATE))
            if not placeholder:
                self.exact["/" + name] = (name, route)
                continue
            family = _StateFamily(before, after, route)
            self.by_state.setdefault("/" + before, {})[after] = family

    def resolve(self, path: str) -> tuple[str, str] | None:
        """(the document's name, the route template) of a path, or None when the path names
        no published document. State codes are taken in any case."""
        found = self.exact.get(path)
        if found is not None:
            return found
        for prefix, families in self.by_state.items():
            if path.startswith(prefix) and (end := path.find("/", len(prefix))) > 0:
                family = families.get(path[end:])
                code = path[len(prefix) : end]
                if family is not None and STATE_CODE_RE.fullmatch(code):
                    name = family.name_prefix + code.lower() + family.name_suffix
                    return name, family.route
        return None


def _route_of(routes: Sequence[BaseRoute], path: str) -> str:
    """The template of the route that answers a GET of ``path`` (the first that matches,
    as the router picks; ``routes`` are the app's routers' own routes, in the app's order)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(route.path_format)  # type: ignore[attr-defined]  # a Route: its template
    raise LookupError(f"no route answers the published document at {path}")


def document_paths(routes: Sequence[BaseRoute]) -> DocumentPaths:
    """The app's table: every published document, and the envelope of ``us/current``."""
    return DocumentPaths(routes, (*document_families(), COVID_STATS))


class FastPath:
    def __init__(
        self,
        app: ASGIApp,
        hot: HotCache,
        paths: DocumentPaths,
        static: Mapping[str, HotEntry] | None = None,
        recent: RecentAnswers | None = None,
    ) -> None:
        self.app = app
        self.hot = hot
        self.paths = paths  # which document a path names
        self.static = static or {}  # fixed answers by path (the page): any query string
        self.recent = recent  # recent query answers, by the request target that led to them

    def find(self, scope: Scope) -> tuple[str, Representation] | None:
        """The answer this layer has for an HTTP request, with its route template (the
        metrics' label), or None when FastAPI must answer it. Counts the memory tier's
        lookups. A raw path with an encoded slash has its ``path`` set to
        :func:`routed_path` first (so FastAPI, answering after, routes that too)."""
        raw = scope.get("raw_path")
        if raw and b"%" in raw and _ENCODED_SLASH.search(raw):
            scope["path"] = routed_path(raw)
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return None
        path = scope["path"]
        fixed = self.static.get(path)
        if fixed is not None:
            return path, fixed
        query_string = scope["query_string"]
        if query_string:
            if self.recent is None:
                return None
            return self.recent.find(path, query_string, self.hot.version)
        if (target := self.paths.resolve(path)) is None:
            return None
        name, route = target
        entry = self.hot.lookup(name)
        return None if entry is None else (route, entry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if (found := self.find(scope)) is not None:
                scope["route_template"], representation = found
                await send_representation(scope, send, representation)
                return
            if scope["query_string"]:  # an answer FastAPI gives may be kept for its target
                token = current_request.set(scope)
                try:
                    await self.app(scope, receive, send)
                finally:
                    current_request.reset(token)
                return
        await self.app(scope, receive, send)
