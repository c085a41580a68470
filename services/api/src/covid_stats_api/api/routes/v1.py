"""The COVID Tracking Project v1 paths, as ``.json`` and ``.csv`` (GET and HEAD).

Without query parameters a path answers with the published document: the upstream's bytes,
key order and nulls. With them (``fields``, ``sort``, ``from``/``to``/``lastdays`` on daily
series, ``states`` on states lists) PostgreSQL answers, cached per snapshot. Single-date and
single-state paths answer with an object, list paths with an array, as upstream did.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel

from covid_stats_api.api import params
from covid_stats_api.api.deps import ApiDep
from covid_stats_api.api.errors import ERROR_RESPONSES
from covid_stats_api.api.params import (
    Derived,
    Fields,
    InfoFields,
    InfoListed,
    Listed,
    QueryParams,
    Series,
    StatesSeries,
    UsFields,
    UsSeries,
)
from covid_stats_api.api.responses import SchemaRef, get_and_head
from covid_stats_api.reads.derived import DerivedRecord
from covid_stats_contract.documents import (
    CSV_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    STATUS,
    check_state_code,
)
from covid_stats_contract.models import StateInfo, StateRecord, UsRecord
from covid_stats_contract.resources import (
    STATES_CURRENT,
    STATES_DAILY,
    STATES_INFO,
    US_CURRENT,
    US_DAILY,
    Resource,
    state_code_pattern,
)
from covid_stats_runtime.http import DATA_SOURCE_HEADER

# Every path under /v1. A date in a path is a `date` segment (``params.DateConvertor``): a
# path whose segment is no date attempt goes on to the routes declared after, whatever the order.
router = APIRouter(prefix="/v1", tags=["v1"])

Fmt = Annotated[Literal["json", "csv"], Path(description="`json` or `csv`")]
StateCode = Annotated[
    str,
    Path(
        pattern=f"^{state_code_pattern()}$",
        description="Two-letter state or territory code, any case",
        examples=["ca"],
    ),
]
Day = Annotated[
    str, Path(pattern=r"^[0-9]{8}$", description="A date, `YYYYMMDD`", examples=["20200401"])
]


class Status(BaseModel):
    """``/v1/status.json``: when the data this service holds was fetched, and its version."""

    buildTime: str
    production: bool
    runNumber: str


def responses(schema: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    """200 as JSON (``schema``) or CSV (a header of the JSON's keys), 304, and the errors."""
    return {
        200: {
            "description": description,
            "content": {
                JSON_CONTENT_TYPE: {"schema": schema},
                CSV_CONTENT_TYPE: {"schema": {"type": "string"}},
            },
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                DATA_SOURCE_HEADER: {"schema": {"type": "string", "enum": ["cache", "database"]}},
            },
        },
        304: {
            "description": "Not modified: `If-None-Match` names the tag of the representation "
            "a 200 would send (its `Accept-Encoding`); the 304 carries that tag"
        },
        **ERROR_RESPONSES,
    }


def array_of(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return responses({"type": "array", "items": SchemaRef(model)}, description)


def object_of(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    return responses(SchemaRef(model), description)


async def _list(
    api: ApiDep,
    resource: Resource,
    fmt: Literal["json", "csv"],
    query: QueryParams,
) -> Response:
    if not query.asked:
        return await api.document(resource.document(fmt))
    return await api.answer(params.build(resource, fmt, query))


@get_and_head(
    router,
    "/us/current.{fmt}",
    summary="US current totals (an array of one record)",
    responses=array_of(UsRecord, "The upstream's `us/current`"),
)
async def us_current(api: ApiDep, fmt: Fmt, query: UsFields) -> Response:
    return await _list(api, US_CURRENT, fmt, query)


@get_and_head(
    router,
    "/us/daily.{fmt}",
    summary="US daily totals, newest first",
    responses=array_of(UsRecord, "The upstream's `us/daily`"),
)
async def us_daily(api: ApiDep, fmt: Fmt, query: UsSeries) -> Response:
    return await _list(api, US_DAILY, fmt, query)


@get_and_head(
    router,
    "/us/derived.{fmt}",
    summary="US derived series: 7-day averages of the daily increases, test positivity",
    responses=array_of(DerivedRecord, "One record per date, newest first"),
)
async def us_derived(api: ApiDep, fmt: Fmt, query: Derived) -> Response:
    question = params.build(US_DAILY, fmt, query)
    return await api.series(US_DAILY.document("json"), question)


@get_and_head(
    router,
    "/us/{date:date}.{fmt}",
    summary="US totals of one date (an object)",
    responses=object_of(UsRecord, "The `us/daily` record of that date"),
)
async def us_date(api: ApiDep, date: Day, fmt: Fmt, query: UsFields) -> Response:
    day = params.parse_date(date, "date")
    return await api.answer(params.build(US_DAILY, fmt, query, day=day, single=True))


@get_and_head(
    router,
    "/states/current.{fmt}",
    summary="Current values of every state, states A..Z",
    responses=array_of(StateRecord, "The upstream's `states/current`"),
)
async def states_current(api: ApiDep, fmt: Fmt, query: Listed) -> Response:
    return await _list(api, STATES_CURRENT, fmt, query)


@get_and_head(
    router,
    "/states/daily.{fmt}",
    summary="Daily values of every state, newest first, then states A..Z",
    responses=array_of(StateRecord, "The upstream's `states/daily`"),
)
async def states_daily(api: ApiDep, fmt: Fmt, query: StatesSeries) -> Response:
    return await _list(api, STATES_DAILY, fmt, query)


@get_and_head(
    router,
    "/states/info.{fmt}",
    summary="Where each state publishes its data, states A..Z",
    responses=array_of(StateInfo, "The upstream's `states/info`"),
)
async def states_info(api: ApiDep, fmt: Fmt, query: InfoListed) -> Response:
    return await _list(api, STATES_INFO, fmt, query)


async def _state(
    api: ApiDep,
    resource: Resource,
    state: str,
    fmt: Literal["json", "csv"],
    query: QueryParams,
) -> Response:
    code = check_state_code(state)
    if not query.asked:
        return await api.document(resource.state_document(code, fmt), state=code)
    single = not resource.per_state_is_list
    built = params.build(resource, fmt, query, state=code, single=single)
    return await api.answer(built, state=code)


@get_and_head(
    router,
    "/states/{state}/current.{fmt}",
    summary="Current values of one state (an object)",
    responses=object_of(StateRecord, "The state's record of `states/current`"),
)
async def state_current(api: ApiDep, state: StateCode, fmt: Fmt, query: Fields) -> Response:
    return await _state(api, STATES_CURRENT, state, fmt, query)


@get_and_head(
    router,
    "/states/{state}/daily.{fmt}",
    summary="Daily values of one state, newest first",
    responses=array_of(StateRecord, "The state's records of `states/daily`"),
)
async def state_daily(api: ApiDep, state: StateCode, fmt: Fmt, query: Series) -> Response:
    return await _state(api, STATES_DAILY, state, fmt, query)


@get_and_head(
    router,
    "/states/{state}/info.{fmt}",
    summary="Where one state publishes its data (an object)",
    responses=object_of(StateInfo, "The state's record of `states/info`"),
)
async def state_info(api: ApiDep, state: StateCode, fmt: Fmt, query: InfoFields) -> Response:
    return await _state(api, STATES_INFO, state, fmt, query)


@get_and_head(
    router,
    "/states/{state}/derived.{fmt}",
    summary="One state's derived series: 7-day averages of the daily increases, positivity",
    responses=array_of(DerivedRecord, "One record per date, newest first"),
)
async def state_derived(api: ApiDep, state: StateCode, fmt: Fmt, query: Derived) -> Response:
    code = check_state_code(state)
    daily = STATES_DAILY.state_document(code, "json")
    return await api.series(daily, params.build(STATES_DAILY, fmt, query), state=code)


@get_and_head(
    router,
    "/states/{state}/{date:date}.{fmt}",
    summary="One state's values of one date (an object)",
    responses=object_of(StateRecord, "The state's `states/daily` record of that date"),
)
async def state_date(
    api: ApiDep,
    state: StateCode,
    date: Day,
    fmt: Fmt,
    query: Fields,
) -> Response:
    code = check_state_code(state)
    day = params.parse_date(date, "date")
    question = params.build(STATES_DAILY, fmt, query, state=code, day=day, single=True)
    return await api.answer(question, state=code)


STATUS_NOT_AS_OF = "the status describes the data held now"


@get_and_head(
    router,
    "/status.json",
    summary="When the data was built: `buildTime` (newest fetch), `runNumber` (data version)",
    responses={
        200: {
            "description": "Describes the data this service holds",
            "content": {JSON_CONTENT_TYPE: {"schema": SchemaRef(Status)}},
        },
        304: {"description": "Not modified"},
        **ERROR_RESPONSES,
    },
)
async def status(
    api: ApiDep, as_of: Annotated[str | None, params.not_as_of(STATUS_NOT_AS_OF)] = None
) -> Response:
    params.refuse_as_of(as_of, STATUS_NOT_AS_OF)
    return await api.document(STATUS)
