"""What the routes depend on: ``Api``, one object per app that answers a route's question
with the one error model (404 unknown state or date, 422 bad parameter, 503 no data)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from covid_stats_api.api.errors import ApiError, no_data
from covid_stats_api.api.responses import send
from covid_stats_api.core.config import Settings
from covid_stats_api.core.stores import Stores
from covid_stats_api.metrics import query_shortcut
from covid_stats_api.reads.canonical import Canonical, UnknownState, canonical, dates_of
from covid_stats_api.reads.changes import ChangesFeed
from covid_stats_api.reads.derived import DerivedService
from covid_stats_api.reads.derived import empty as derived_empty
from covid_stats_api.reads.documents import DocumentReader, Served
from covid_stats_api.reads.queries import (
    NoRecords,
    NotPublishedYet,
    Query,
    QueryService,
    StoreUnavailable,
    TooLarge,
    UnknownField,
    empty,
)
from covid_stats_api.reads.recent import RecentAnswers, current_request
from covid_stats_api.reads.span import SpanService
from covid_stats_contract.documents import check_state_code
from covid_stats_contract.edge import AS_OF, document_keys, query_keys
from covid_stats_contract.resources import STATES_CURRENT
from covid_stats_runtime.http import RepresentationResponse


class Api:
    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        reader: DocumentReader,
        queries: QueryService,
        derived: DerivedService,
        span: SpanService,
        recent: RecentAnswers,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.reader = reader
        self.queries = queries
        self.derived = derived
        self.changes = ChangesFeed(stores)  # GET /v1/changes.json
        self.span = span
        self.recent = recent  # this worker's recent query answers

    def send(self, served: Served, keys: Iterable[str]) -> RepresentationResponse:
        """``served`` with its surrogate ``keys`` (``covid_stats_contract.edge``)."""
        return send(served, self.settings.cache_policy, keys)

    def no_data(self) -> ApiError:
        return no_data(self.settings.retry_after_seconds)

    async def document(self, name: str, state: str | None = None) -> Response:
        """A published document; for a state's document, 404 when the state is unknown."""
        served = await self.reader.read(name)
        if served is None:
            if state is not None:
                await self.require_state(state)
            raise self.no_data()
        return self.send(served, document_keys(name))

    async def canonical(self, query: Query, state: str | None) -> Canonical:
        """``query`` keyed by what it selects (``reads.canonical``); 404 for an unknown
        state in the path, 422 in ``states``, 422 ``too_large`` for a surely too large one."""
        try:
            return canonical(query, await self.span.get(), self.settings.query_answer_max_bytes)
        except UnknownState as exc:
            if state is not None:
                await self.require_state(state)
            codes = ", ".join(repr(code) for code in exc.codes)
            raise ApiError(
                422, "unknown_state", f"states: no data for {codes}", parameter="states"
            ) from None
        except UnknownField as exc:
            raise ApiError(422, "invalid_parameter", str(exc), parameter=exc.parameter) from None
        except TooLarge as exc:
            raise too_large(exc) from None

    async def answer(self, query: Query, state: str | None = None) -> Response:
        """The answer to a query; 404 for a single record that does not exist, or for an
        unknown state."""
        # Keyed by what it selects in the data held now; a question as of an instant is
        # keyed by its own (QueryService: the versions it reads), never rewritten with
        # today's span nor answered with today's document.
        asked = await self.canonical(query, state) if query.as_of is None else Canonical(query)
        query = asked.query
        # The snapshot this answer is of, as the hot tier knows it; None: not kept in memory
        # (not known, a question as of an instant, a published document, an empty answer).
        version = self.reader.hot.version if query.as_of is None else None
        if asked.document is not None or asked.empty:
            version = None
        if version is not None:
            recent = self.recent.get(query.key, version)
            if recent is not None:
                return RepresentationResponse(recent.representation)
        try:
            if asked.document is not None:
                query_shortcut("document").inc()
                # The worker's own copy, as the fast path serves the document's own URL: the
                # Redis read it replaces brought back up to 15 MB per question (the states'
                # daily series and its compressed forms) on the event loop.
                if (held := self.reader.hot.lookup(asked.document)) is not None:
                    return RepresentationResponse(held)
                return await self.document(asked.document, state)
            if asked.empty:
                query_shortcut("empty").inc()
                if query.single:
                    raise NoRecords
                served = empty(query)
            else:
                served = await self.queries.answer(query, asked.rows)
        except TooLarge as exc:
            raise too_large(exc) from None
        except UnknownField as exc:
            raise ApiError(422, "invalid_parameter", str(exc), parameter=exc.parameter) from None
        except NoRecords:
            if state is not None:
                await self.require_state(state)
            day = f" on {query.date_from}" if query.date_from else ""
            where = f" for {state.upper()}" if state else ""
            raise ApiError(404, "not_found", f"No record{where}{day}") from None
        except StoreUnavailable:
            raise self.no_data() from None
        except NotPublishedYet as exc:
            raise not_published(exc) from None
        nothing = served.body in (b"[]\n", b"\n")  # an empty array or CSV: never kept
        if state is not None and nothing:
            await self.require_state(state)
        keys = answer_keys(query)
        response = self.send(served, keys)
        if version is not None and version == self.reader.hot.version and not nothing:
            # Kept as the Redis cache serves it (its source: the cache), whichever store
            # answered this time, with the same edge headers; the fast path answers the same
            # target from now on.
            kept = self.send(replace(served, source="cache"), keys)
            scope = current_request.get(None)
            target = route = None
            if scope is not None:  # the request as the fast path saw it
                target = (scope["path"], scope["query_string"])
                route = getattr(scope.get("route"), "path_format", None)
            self.recent.put(query.key, kept.representation, version, target, route)
        return response

    async def series(self, daily_document: str, query: Query, state: str | None = None) -> Response:
        """The derived series of a daily document, the dates and fields ``query`` asks."""
        span = await self.span.get() if query.as_of is None else None  # today's dates
        if span is not None and (state is None or state in span.states):
            # Keyed by the dates it selects, as a query is: the series' dates are its daily's.
            query, empty = dates_of(query, span.series(None if state is None else (state,)))
            if empty:
                query_shortcut("empty").inc()
                return self.send(derived_empty(query), series_keys(daily_document, query))
        try:
            daily = None
            if query.as_of is not None:  # the daily series as served then (its JSON list)
                states = (state.upper(),) if state is not None else ()
                asked = Query(query.resource, "json", states=states, as_of=query.as_of)
                daily = await self.queries.answer(asked)
                if state is not None and daily.body == b"[]\n":
                    await self.require_state(state)
            served = await self.derived.series(daily_document, query, daily)
        except NotPublishedYet as exc:
            raise not_published(exc) from None
        except UnknownField as exc:
            raise ApiError(422, "invalid_parameter", str(exc), parameter=exc.parameter) from None
        except StoreUnavailable:
            if state is not None:
                await self.require_state(state)
            raise self.no_data() from None
        return self.send(served, series_keys(daily_document, query))

    async def require_state(self, state: str) -> None:
        """404 unless the stores know ``state``; 503 when they hold no data at all."""
        code = check_state_code(state)
        if await self.reader.read(STATES_CURRENT.state_document(code)) is not None:
            return
        if await self.reader.has_state_data():
            raise ApiError(404, "unknown_state", f"No data for state {code!r}", parameter="state")
        raise self.no_data()


def answer_keys(query: Query) -> tuple[str, ...]:
    """The surrogate keys of a query's answer: as of an instant, ``AS_OF`` alone (it never
    changes); else those of the documents it is drawn from (``edge.query_keys``)."""
    if query.as_of is not None:
        return (AS_OF,)
    return query_keys(query.resource, query.fmt, query.states)


def series_keys(daily_document: str, query: Query) -> tuple[str, ...]:
    """The surrogate keys of a derived series: its daily document's (``AS_OF`` as of an
    instant)."""
    return (AS_OF,) if query.as_of is not None else document_keys(daily_document)


def too_large(exc: TooLarge) -> ApiError:
    query_shortcut("too_large").inc()
    return ApiError(
        422,
        "too_large",
        f"The answer is over {exc.limit} bytes (at least {exc.size}): narrow the question"
        " (from/to or lastdays, states, fields), or fetch the whole published document"
        f" /{exc.document} (no query parameters) and sort it yourself",
    )


def not_published(exc: NotPublishedYet) -> ApiError:
    """404 naming ``as_of``: the instant is before the first publish."""
    first = exc.first_published
    when = f"the first was at {first.isoformat()}" if first else "nothing is published yet"
    return ApiError(
        404,
        "not_published",
        f"as_of: this api served no data at that instant ({when})",
        parameter="as_of",
    )


async def get_api(request: Request) -> Api:
    """The worker's ``Api``. A coroutine, though it awaits nothing: FastAPI runs a plain
    function dependency in its thread pool, a thread hand-off per request on the loop."""
    api: Api = request.app.state.api
    return api


ApiDep = Annotated[Api, Depends(get_api)]
