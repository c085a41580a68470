"""The query parameters of the list endpoints, validated and normalized.

Each shape of parameters is one model, declared once here and named by the routes that take
it. A request's parameters become one ``Query`` (``reads.queries``, the question the data
access answers); its ``key`` is the same for every spelling of the same question (case,
order, duplicates), so equal questions share one cache entry. Malformed values answer 422
naming the parameter.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import Query as Param
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from covid_stats_api.api.errors import ApiError
from covid_stats_api.reads.queries import Query
from covid_stats_contract.resources import Format, Resource, state_code_pattern

# ASCII only, matched whole (fullmatch): no Unicode digits, no trailing newline.
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9]*", re.ASCII)
_DATE = re.compile(r"(\d{4})(-?)(\d{2})\2(\d{2})", re.ASCII)  # YYYYMMDD or YYYY-MM-DD
_STATE = re.compile(state_code_pattern(), re.ASCII)
# A question sorts by at most this many fields (each one a statement text per direction).
MAX_SORT_KEYS = 4
# An ISO 8601 instant with its offset: date, time (seconds and a fraction optional), Z or +hh:mm.
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})", re.ASCII
)

AS_OF = "as_of"
AS_OF_DESCRIPTION = (
    "Answer exactly as this api served it at this ISO 8601 instant, with its offset "
    "(`2026-12-04T23:00:00Z`): the records of the snapshot current then, the other parameters "
    "applied as to current data. 404 (`not_published`) before the first publish; 422 for a "
    "malformed instant or one in the future."
)


class DateConvertor(Convertor[str]):
    """A date in a path, ``{date:date}``: a segment of digits and dashes, a date or an attempt
    at one (``20200401``; ``2020-04-01`` and ``2020041`` reach the route, which answers 422
    naming the date). Any other segment is no date, so a date route never shadows a route
    declared after it (``/v1/us/{date:date}.{fmt}`` leaves ``/v1/us/summary.json`` alone)."""

    regex = "[0-9][0-9-]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("date", DateConvertor())


def fields_param(example: str) -> Any:
    """The ``fields`` parameter, documented with an example valid for its records."""
    return Field(
        None,
        description="Comma-separated fields to return (in the records' own key order). "
        "Fields the records do not have answer 422.",
        examples=[example],
        max_length=2000,
    )


def sort_param(example: str) -> Any:
    """The ``sort`` parameter, documented with an example valid for its records."""
    return Field(
        None,
        description="Sort by fields, each ascending (`positive`) or descending (`-positive`),"
        " nulls last; several, comma-separated, sort by each in turn (`-death,positive`: ties"
        f" of `death` by `positive`), at most {MAX_SORT_KEYS}. Default: the upstream's order.",
        examples=[example],
        max_length=100,
    )


class QueryParams(BaseModel):
    """Query parameters of one shape; FastAPI reads a model's fields from the query string
    (``Annotated[Model, Query()]``) and answers 422 naming the field that is malformed.
    Parameters a shape does not have are ignored, as they always were. Every shape has
    ``as_of``.

    The shapes below are the states' records' (their examples name a state's fields); the
    ``Us*`` and ``Info*`` models change only the examples, since a documented example must
    be a valid request (schemathesis sends them)."""

    as_of: str | None = Field(
        None, description=AS_OF_DESCRIPTION, examples=["2026-12-04T23:00:00Z"], max_length=40
    )

    @property
    def asked(self) -> bool:
        """Whether any parameter was given (else the route serves its published document)."""
        return any(value is not None for value in self.model_dump().values())


class FieldsParams(QueryParams):
    """A projection: the single-record paths and ``us/current``."""

    fields: str | None = fields_param("date,state,positive")


class SortedParams(FieldsParams):
    sort: str | None = sort_param("-positive")


class _StatesParam(BaseModel):
    states: str | None = Field(
        None,
        description="Comma-separated two-letter state codes, any case, e.g. `ca,ny`.",
        examples=["ca,ny"],
        max_length=400,
    )


class _DatesParams(BaseModel):
    date_from: str | None = Field(
        None,
        alias="from",
        description="First date, `YYYYMMDD` or `YYYY-MM-DD` (inclusive).",
        examples=["20200401"],
        max_length=10,
    )
    to: str | None = Field(
        None,
        description="Last date, `YYYYMMDD` or `YYYY-MM-DD` (inclusive).",
        examples=["20200430"],
        max_length=10,
    )
    lastdays: int | None = Field(
        None, description="Only the N most recent dates of the series.", ge=1, le=10000
    )


class ListParams(_StatesParam, SortedParams):
    """A states list: ``states/current``, ``states/info``."""


class SeriesParams(_DatesParams, SortedParams):
    """A daily series: ``us/daily``, one state's ``daily``."""


class StatesSeriesParams(_StatesParam, SeriesParams):
    """Every state's daily series: ``states/daily``."""


class DerivedParams(_DatesParams, FieldsParams):
    """A derived series (no ``sort``: it is by date, newest first)."""

    fields: str | None = fields_param("date,positiveIncreaseAvg7d")


class UsFieldsParams(FieldsParams):
    fields: str | None = fields_param("date,positive,death")


class UsSeriesParams(SeriesParams):
    fields: str | None = fields_param("date,positive,death")


class InfoFieldsParams(FieldsParams):
    fields: str | None = fields_param("state,name,fips")


class InfoListParams(ListParams):
    fields: str | None = fields_param("state,name,fips")
    sort: str | None = sort_param("name")


# What the routes take (FastAPI reads each model's fields from the query string).
Fields = Annotated[FieldsParams, Param()]
Listed = Annotated[ListParams, Param()]
Series = Annotated[SeriesParams, Param()]
StatesSeries = Annotated[StatesSeriesParams, Param()]
Derived = Annotated[DerivedParams, Param()]
UsFields = Annotated[UsFieldsParams, Param()]
UsSeries = Annotated[UsSeriesParams, Param()]
InfoFields = Annotated[InfoFieldsParams, Param()]
InfoListed = Annotated[InfoListParams, Param()]


def parse_date(value: str, parameter: str) -> int:
    match = _DATE.fullmatch(value)
    if match:
        try:
            day = date(int(match[1]), int(match[3]), int(match[4]))
            return int(day.strftime("%Y%m%d"))
        except ValueError:
            pass
    raise ApiError(
        422, "invalid_parameter", f"{parameter}: not a date: {value!r}", parameter=parameter
    )


NOT_AS_OF_DESCRIPTION = "Not accepted here (422 naming it): {why}."


def not_as_of(why: str) -> Any:
    """An ``as_of`` parameter a path refuses (``refuse_as_of``), documented with the reason."""
    return Param(alias=AS_OF, description=NOT_AS_OF_DESCRIPTION.format(why=why), max_length=40)


def parse_instant(value: str, parameter: str) -> datetime:
    """An ISO 8601 instant with its UTC offset (``2026-12-04T23:00:00Z``); 422 otherwise."""
    try:
        if not _INSTANT.fullmatch(value):
            raise ValueError(value)
        return datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            422,
            "invalid_parameter",
            f"Invalid {parameter}: expected an ISO 8601 instant with its offset, such as "
            "2026-12-04T23:00:00Z",
            parameter=parameter,
        ) from None


def parse_as_of(value: str) -> datetime:
    """``as_of``: an instant (``parse_instant``) not in the future (what will be served
    then is not known yet; 422)."""
    instant = parse_instant(value, AS_OF)
    if instant > datetime.now(UTC):
        raise ApiError(
            422, "invalid_parameter", "as_of: the instant is in the future", parameter=AS_OF
        )
    return instant


def refuse_as_of(value: str | None, why: str) -> None:
    """422 naming ``as_of`` on a path that does not answer as of an instant."""
    if value is not None:
        raise ApiError(
            422, "invalid_parameter", f"as_of: not accepted on this path ({why})", parameter=AS_OF
        )


def _names(value: str, parameter: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    bad = [name for name in names if not _FIELD.fullmatch(name)]
    if not names or bad:
        raise ApiError(
            422,
            "invalid_parameter",
            f"{parameter}: not a field name: {bad[0] if bad else value!r}",
            parameter=parameter,
        )
    return names


def _sort_keys(value: str) -> tuple[tuple[str, bool], ...]:
    """``sort``'s keys in order, each (field, descending); a field given twice counts once
    (its first place: later ones could not reorder anything)."""
    keys: dict[str, bool] = {}
    for part in filter(None, (text.strip() for text in value.split(","))):
        name = part.removeprefix("-").removeprefix("+") if part[:1] in "-+" else part
        if not _FIELD.fullmatch(name):
            raise ApiError(
                422, "invalid_parameter", f"sort: not a field name: {part!r}", parameter="sort"
            )
        keys.setdefault(name, part.startswith("-"))
    if not keys:
        raise ApiError(422, "invalid_parameter", f"sort: no field: {value!r}", parameter="sort")
    if len(keys) > MAX_SORT_KEYS:
        raise ApiError(
            422,
            "invalid_parameter",
            f"sort: at most {MAX_SORT_KEYS} fields, not {len(keys)}",
            parameter="sort",
        )
    return tuple(keys.items())


def build(
    resource: Resource,
    fmt: Format,
    params: QueryParams,
    *,
    state: str | None = None,
    day: int | None = None,
    single: bool = False,
) -> Query:
    """The question a request asks: ``params`` checked and normalized (422 naming the
    parameter), narrowed to one state (a state's path) or one date (a date's path)."""
    given: dict[str, Any] = params.model_dump()
    fields, sort, states = given.get("fields"), given.get("sort"), given.get("states")
    date_from, date_to, last_days = given.get("date_from"), given.get("to"), given.get("lastdays")
    as_of = parse_as_of(given["as_of"]) if given.get("as_of") is not None else None
    field_names = _names(fields, "fields") if fields is not None else ()
    sort_keys = _sort_keys(sort) if sort is not None else ()
    start = parse_date(date_from, "from") if date_from is not None else None
    end = parse_date(date_to, "to") if date_to is not None else None
    if start is not None and end is not None and start > end:
        raise ApiError(422, "invalid_parameter", "from: after `to`", parameter="from")
    if day is not None:
        start = end = day
    codes: tuple[str, ...] = ()
    if states is not None:
        parts = [part.strip() for part in states.split(",") if part.strip()]
        bad = [part for part in parts if not _STATE.fullmatch(part)]
        if not parts or bad:
            raise ApiError(
                422,
                "invalid_parameter",
                f"states: not a state code: {bad[0] if bad else states!r}",
                parameter="states",
            )
        codes = tuple(sorted({part.upper() for part in parts}))
    if state is not None:
        codes = (state.upper(),)
    return Query(
        resource=resource,
        fmt=fmt,
        fields=field_names,
        sort=sort_keys,
        date_from=start,
        date_to=end,
        last_days=last_days,
        states=codes,
        single=single,
        as_of=as_of,
    )
