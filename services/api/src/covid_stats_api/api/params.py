"""The query parameters of the list endpoints, validated and normalized.

A request's parameters become one ``Query``; its ``key`` is the same for every spelling of
the same question (case, order, duplicates), so equal questions share one cache entry.
Malformed values answer 422 naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from fastapi import Depends
from fastapi import Query as Param

from covid_stats_api.api.errors import ApiError
from covid_stats_contract.resources import Format, Resource

# ASCII only, matched whole (fullmatch): no Unicode digits, no trailing newline.
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9]*", re.ASCII)
_DATE = re.compile(r"(\d{4})(-?)(\d{2})\2(\d{2})", re.ASCII)  # YYYYMMDD or YYYY-MM-DD
_STATE = re.compile(r"[A-Za-z]{2}", re.ASCII)


def fields_param(example: str) -> Any:
    return Param(
        description="Comma-separated fields to return (in the records' own key order). "
        "Fields the records do not have answer 422.",
        examples=[example],
        max_length=2000,
    )


def sort_param(example: str) -> Any:
    return Param(
        description="Sort by a field, ascending (`positive`) or descending (`-positive`); "
        "nulls last. Default: the upstream's order.",
        examples=[example],
        max_length=100,
    )


UsFields = Annotated[str | None, fields_param("date,positive,death")]
StateFields = Annotated[str | None, fields_param("date,state,positive")]
InfoFields = Annotated[str | None, fields_param("state,name,fips")]
CountSort = Annotated[str | None, sort_param("-positive")]
InfoSort = Annotated[str | None, sort_param("name")]
FromParam = Annotated[
    str | None,
    Param(
        alias="from",
        description="First date, `YYYYMMDD` or `YYYY-MM-DD` (inclusive).",
        examples=["20200401"],
        max_length=10,
    ),
]
ToParam = Annotated[
    str | None,
    Param(
        description="Last date, `YYYYMMDD` or `YYYY-MM-DD` (inclusive).",
        examples=["20200430"],
        max_length=10,
    ),
]
LastDaysParam = Annotated[
    int | None,
    Param(description="Only the N most recent dates of the series.", ge=1, le=10000),
]
StatesParam = Annotated[
    str | None,
    Param(
        description="Comma-separated two-letter state codes, any case, e.g. `ca,ny`.",
        examples=["ca,ny"],
        max_length=400,
    ),
]


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


@dataclass(frozen=True)
class Query:
    """One question to the store: a resource, filters, a sort, a projection, a format."""

    resource: Resource
    fmt: Format
    fields: tuple[str, ...] = ()
    sort: str | None = None
    descending: bool = False
    date_from: int | None = None
    date_to: int | None = None
    last_days: int | None = None
    states: tuple[str, ...] = ()
    single: bool = False  # a single record (one state's current/info, one date): an object

    @property
    def key(self) -> str:
        """Canonical text of the question (the cache key's source)."""
        parts = [
            self.resource.key,
            self.fmt,
            "single" if self.single else "list",
            ",".join(sorted(self.fields)),  # the answer keeps the records' order anyway
            ("-" if self.descending else "") + (self.sort or ""),
            str(self.date_from or ""),
            str(self.date_to or ""),
            str(self.last_days or ""),
            ",".join(self.states),
        ]
        return "|".join(parts)


def build(
    resource: Resource,
    fmt: Format,
    *,
    fields: str | None = None,
    sort: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    last_days: int | None = None,
    states: str | None = None,
    state: str | None = None,
    day: int | None = None,
    single: bool = False,
) -> Query:
    field_names = _names(fields, "fields") if fields is not None else ()
    sort_name, descending = None, False
    if sort is not None:
        descending = sort.startswith("-")
        (sort_name,) = _names(sort.removeprefix("-").removeprefix("+"), "sort")[:1]
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
        sort=sort_name,
        descending=descending,
        date_from=start,
        date_to=end,
        last_days=last_days,
        states=codes,
        single=single,
    )


def _series(
    fields: str | None,
    sort: str | None,
    date_from: str | None,
    to: str | None,
    lastdays: int | None,
) -> dict[str, Any]:
    return {
        "fields": fields,
        "sort": sort,
        "date_from": date_from,
        "date_to": to,
        "last_days": lastdays,
    }


def us_series(
    fields: UsFields = None,
    sort: CountSort = None,
    date_from: FromParam = None,
    to: ToParam = None,
    lastdays: LastDaysParam = None,
) -> dict[str, Any]:
    """The query parameters of a US daily series."""
    return _series(fields, sort, date_from, to, lastdays)


def state_series(
    fields: StateFields = None,
    sort: CountSort = None,
    date_from: FromParam = None,
    to: ToParam = None,
    lastdays: LastDaysParam = None,
) -> dict[str, Any]:
    """The query parameters of a state daily series."""
    return _series(fields, sort, date_from, to, lastdays)


DerivedFields = Annotated[str | None, fields_param("date,positiveIncreaseAvg7d")]


def derived_series(
    fields: DerivedFields = None,
    date_from: FromParam = None,
    to: ToParam = None,
    lastdays: LastDaysParam = None,
) -> dict[str, Any]:
    """The query parameters of a derived series (no ``sort``: it is by date, newest first)."""
    return {"fields": fields, "date_from": date_from, "date_to": to, "last_days": lastdays}


UsSeries = Annotated[dict[str, Any], Depends(us_series)]
StateSeries = Annotated[dict[str, Any], Depends(state_series)]
DerivedSeries = Annotated[dict[str, Any], Depends(derived_series)]
