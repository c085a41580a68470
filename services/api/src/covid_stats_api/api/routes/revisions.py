"""Revisions of the daily series: ``/v1/us/revisions.{fmt}``, ``/v1/states/{st}/revisions.{fmt}``.

One row per changed value, newest first (by when the change was first seen, then record date
descending, then field): the record's ``date`` (``YYYYMMDD``), the ``field``, its ``old`` and
``new`` values, ``firstSeen`` (when the fetcher first stored the new value) and ``snapshotId``
(the snapshot that first served it). Filters: ``from`` and ``to`` (record dates), ``field``,
``since`` (first seen strictly after an ISO 8601 instant).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi import Query as Param
from fastapi.responses import Response
from pydantic import BaseModel, Field

from covid_stats_api.api import params
from covid_stats_api.api.deps import ApiDep
from covid_stats_api.api.errors import ERROR_RESPONSES, ApiError
from covid_stats_api.api.responses import get_and_head
from covid_stats_api.reads.queries import StoreUnavailable
from covid_stats_api.reads.revisions import RevisionsQuery, RevisionsService
from covid_stats_contract.documents import CSV_CONTENT_TYPE, JSON_CONTENT_TYPE, check_state_code
from covid_stats_contract.edge import query_keys
from covid_stats_contract.resources import STATES_DAILY, US_DAILY, Resource, state_code_pattern
from covid_stats_runtime.http import DATA_SOURCE_HEADER

router = APIRouter(prefix="/v1", tags=["revisions"])

Fmt = Annotated[Literal["json", "csv"], Path(description="`json` or `csv`")]
StateCode = Annotated[
    str,
    Path(
        pattern=f"^{state_code_pattern()}$",
        description="Two-letter state or territory code, any case",
        examples=["mi"],
    ),
]

# An ISO 8601 instant: a date and time with a UTC offset (`Z` or +HH:MM), ASCII digits only.
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}:?\d{2})",
    re.ASCII,
)
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9]*", re.ASCII)


class Revision(BaseModel):
    """One changed value of a record."""

    date: int = Field(description="The record's date, `YYYYMMDD`", examples=[20200301])
    state: str | None = Field(
        None, description="The record's state (states' revisions only)", examples=["MI"]
    )
    field: str = Field(description="The field whose value changed", examples=["positive"])
    old: int | float | str | bool | None = Field(description="The value before", examples=[9])
    new: int | float | str | bool | None = Field(description="The value after", examples=[14])
    firstSeen: str = Field(
        description="When the new value was first stored (ISO 8601, UTC)",
        examples=["2026-12-05T03:30:00.123456Z"],
    )
    snapshotId: str | None = Field(
        description="The snapshot that first served it (null until published)", examples=["7"]
    )


REVISION_SCHEMA = Revision.model_json_schema()


REVISIONS_NOT_AS_OF = "revisions are a history already: `since` selects from it"


class RevisionsParams(BaseModel):
    date_from: str | None = Field(
        None,
        alias="from",
        description="First record date, `YYYYMMDD` or `YYYY-MM-DD` (inclusive).",
        examples=["20200301"],
        max_length=10,
    )
    to: str | None = Field(
        None,
        description="Last record date, `YYYYMMDD` or `YYYY-MM-DD` (inclusive).",
        examples=["20200331"],
        max_length=10,
    )
    field: str | None = Field(
        None,
        description="Only the revisions of this field (a record field's name).",
        examples=["positive"],
        max_length=100,
    )
    since: str | None = Field(
        None,
        description="Only the revisions first seen after this ISO 8601 instant, with its UTC "
        "offset (`2026-12-04T23:00:00Z`, `2026-12-05T00:00:00+01:00`).",
        examples=["2020-01-01T00:00:00Z"],
        max_length=40,
    )
    as_of: str | None = Field(
        None,
        description=params.NOT_AS_OF_DESCRIPTION.format(why=REVISIONS_NOT_AS_OF),
        max_length=40,
    )


Revisions = Annotated[RevisionsParams, Param()]


def _invalid(parameter: str, message: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"{parameter}: {message}", parameter=parameter)


def build(
    resource: Resource, fmt: Literal["json", "csv"], given: RevisionsParams, state: str | None
) -> RevisionsQuery:
    """The question of a request, its parameters checked (422 naming the parameter)."""
    params.refuse_as_of(given.as_of, REVISIONS_NOT_AS_OF)
    start = params.parse_date(given.date_from, "from") if given.date_from is not None else None
    end = params.parse_date(given.to, "to") if given.to is not None else None
    if start is not None and end is not None and start > end:
        raise _invalid("from", "after `to`")
    if given.field is not None and not _FIELD.fullmatch(given.field):
        raise _invalid("field", f"not a field name: {given.field!r}")
    since = None
    if given.since is not None:
        if not _INSTANT.fullmatch(given.since):
            raise _invalid("since", f"not an ISO 8601 instant with its offset: {given.since!r}")
        try:
            since = datetime.fromisoformat(given.since.upper().replace("Z", "+00:00"))
        except ValueError:
            raise _invalid("since", f"not a valid instant: {given.since!r}") from None
    return RevisionsQuery(resource, fmt, state, start, end, given.field, since)


DESCRIPTION = (
    "One row per changed value, newest first (by `firstSeen`, then date descending, then field)"
)


def _responses(by_state: bool) -> dict[int | str, dict[str, object]]:
    return {
        200: {
            "description": DESCRIPTION + (" (with each record's `state`)" if by_state else ""),
            "content": {
                # Inline (not a component): the components are the records' schemas.
                JSON_CONTENT_TYPE: {"schema": {"type": "array", "items": REVISION_SCHEMA}},
                CSV_CONTENT_TYPE: {"schema": {"type": "string"}},
            },
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                DATA_SOURCE_HEADER: {"schema": {"type": "string", "enum": ["cache", "database"]}},
            },
        },
        304: {"description": "Not modified: the `If-None-Match` tag is current"},
        **ERROR_RESPONSES,
    }


async def _answer(api: ApiDep, query: RevisionsQuery, state: str | None) -> Response:
    service = RevisionsService(api.stores, api.queries.answers)
    try:
        served = await service.answer(query)
    except StoreUnavailable:
        raise api.no_data() from None
    empty = served.body == b"[]\n" or (query.fmt == "csv" and served.body.count(b"\n") == 1)
    if state is not None and empty:
        await api.require_state(state)
    # A value's revision is recorded when its daily record changes: that record's documents.
    states = (query.state,) if query.state is not None else ()
    return api.send(served, query_keys(query.resource, query.fmt, states))


@get_and_head(
    router,
    "/us/revisions.{fmt}",
    summary="Revisions of the US daily totals: every changed value, newest first",
    responses=_responses(False),
)
async def us_revisions(api: ApiDep, fmt: Fmt, query: Revisions) -> Response:
    return await _answer(api, build(US_DAILY, fmt, query, None), None)


@get_and_head(
    router,
    "/states/{state}/revisions.{fmt}",
    summary="Revisions of one state's daily values: every changed value, newest first",
    responses=_responses(True),
)
async def state_revisions(api: ApiDep, state: StateCode, fmt: Fmt, query: Revisions) -> Response:
    code = check_state_code(state)
    return await _answer(api, build(STATES_DAILY, fmt, query, code.upper()), code)
