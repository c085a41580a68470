"""Typed models of the upstream's records, and the JSON/CSV payload parsers.

The models validate; they do not reshape. The fetcher stores each record as the upstream
sent it (its keys, their order, its nulls), so documents rebuilt from the store are the
upstream's own. What they accept, as the real upstream served it:

- fields added over time: unknown fields are kept (``extra="allow"``) and every field but
  a few core ones may be missing;
- nulls for any measure; ``fips`` as a string ("06"); ``totalTestResultsSource`` a string;
- timestamps with hour 24 (``2021-03-06T24:00:00Z``), which strict ISO parsers reject;
- the CSV form, where every cell is text: cells are typed by the model's fields (unknown
  columns: integer-looking cells become ints), an empty cell is null, except the fields the
  upstream's JSON wrote as "" when empty.

What they reject: wrong types (strict mode: no "123" for an int), a core field missing (a
renamed field is a changed schema), a negative cumulative count (only ``*Increase`` fields
may be negative), an impossible date.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from datetime import date as Date
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from covid_stats_contract.resources import (
    STATES_INFO,
    US_CURRENT,
    US_DAILY,
    Resource,
    state_code_pattern,
)

_TIMESTAMP_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?Z$")


def _check_date(value: int) -> int:
    try:
        Date(value // 10000, value // 100 % 100, value % 100)
    except ValueError:
        raise ValueError(f"not a YYYYMMDD date: {value}") from None
    return value


def _check_timestamp(value: str) -> str:
    """ISO 8601 UTC, hour 0..24 (the upstream wrote midnight as 24:00 of the day before)."""
    match = _TIMESTAMP_RE.match(value)
    if not match:
        raise ValueError(f"not an ISO 8601 UTC timestamp: {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    Date(year, month, day)
    if hour > 24 or minute > 59 or second > 60 or (hour == 24 and (minute or second)):
        raise ValueError(f"not a time of day: {value!r}")
    return value


YYYYMMDD = Annotated[int, AfterValidator(_check_date)]
Timestamp = Annotated[str, AfterValidator(_check_timestamp)]
StateCode = Annotated[str, Field(pattern=f"^{state_code_pattern('upper')}$")]
Count = Annotated[int, Field(ge=0)]
Fips = Annotated[str, Field(pattern=r"^\d{2}$")]


class UpstreamRecord(BaseModel):
    """What every upstream record shares: strict types, unknown fields kept."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    # Fields the upstream's JSON wrote as "" when empty (the others as null).
    EMPTY_STRING_FIELDS: ClassVar[frozenset[str]] = frozenset()
    EMPTY_STRING_BY_DEFAULT: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check_extra_fields(self) -> UpstreamRecord:
        for name, value in (self.model_extra or {}).items():
            if isinstance(value, dict | list):
                raise ValueError(f"field {name!r}: nested values are not upstream records")
            if type(value) is int and value < 0 and not name.endswith("Increase"):
                raise ValueError(f"field {name!r}: negative count {value}")
        return self


class _Measures(UpstreamRecord):
    """Measures the US and state records share (all optional: added over time)."""

    positive: Count | None  # core: required, may be null
    negative: Count | None = None
    pending: Count | None = None
    hospitalizedCurrently: Count | None = None
    hospitalizedCumulative: Count | None = None
    inIcuCurrently: Count | None = None
    inIcuCumulative: Count | None = None
    onVentilatorCurrently: Count | None = None
    onVentilatorCumulative: Count | None = None
    recovered: Count | None = None
    death: Count | None = None
    hospitalized: Count | None = None
    total: Count | None = None
    totalTestResults: Count | None = None
    posNeg: Count | None = None
    deathIncrease: int | None = None
    hospitalizedIncrease: int | None = None
    negativeIncrease: int | None = None
    positiveIncrease: int | None = None
    totalTestResultsIncrease: int | None = None
    dateChecked: Timestamp | None = None
    lastModified: Timestamp | None = None
    hash: str | None = None


class UsRecord(_Measures):
    """A record of ``us/current`` or ``us/daily``."""

    date: YYYYMMDD
    states: Count | None = None


class StateRecord(_Measures):
    """A record of ``states/current`` or ``states/daily``."""

    EMPTY_STRING_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"grade", "dataQualityGrade", "lastUpdateEt"}
    )

    date: YYYYMMDD
    state: StateCode
    fips: Fips | None = None
    dataQualityGrade: str | None = None
    lastUpdateEt: str | None = None
    dateModified: Timestamp | None = None
    checkTimeEt: str | None = None
    totalTestResultsSource: str | None = None
    grade: str | None = None
    probableCases: Count | None = None
    hospitalizedDischarged: Count | None = None
    totalTestsViral: Count | None = None
    positiveTestsViral: Count | None = None
    negativeTestsViral: Count | None = None
    positiveCasesViral: Count | None = None
    deathConfirmed: Count | None = None
    deathProbable: Count | None = None
    totalTestEncountersViral: Count | None = None
    totalTestsPeopleViral: Count | None = None
    totalTestsAntibody: Count | None = None
    positiveTestsAntibody: Count | None = None
    negativeTestsAntibody: Count | None = None
    totalTestsPeopleAntibody: Count | None = None
    positiveTestsPeopleAntibody: Count | None = None
    negativeTestsPeopleAntibody: Count | None = None
    totalTestsPeopleAntigen: Count | None = None
    positiveTestsPeopleAntigen: Count | None = None
    totalTestsAntigen: Count | None = None
    positiveTestsAntigen: Count | None = None
    commercialScore: Count | None = None
    negativeRegularScore: Count | None = None
    negativeScore: Count | None = None
    positiveScore: Count | None = None
    score: Count | None = None


class StateInfo(UpstreamRecord):
    """A record of ``states/info``: where each jurisdiction publishes its data."""

    # Its JSON wrote every empty text field as "", except notes (null).
    EMPTY_STRING_BY_DEFAULT: ClassVar[bool] = True
    NULL_WHEN_EMPTY: ClassVar[frozenset[str]] = frozenset({"notes"})

    state: StateCode
    name: str  # core
    fips: Fips | None = None
    notes: str | None = None
    covid19Site: str | None = None
    covid19SiteSecondary: str | None = None
    covid19SiteTertiary: str | None = None
    twitter: str | None = None
    covid19SiteOld: str | None = None
    pui: str | None = None
    pum: bool | None = None


@functools.cache
def _field_kind(model: type[UpstreamRecord], name: str) -> str:
    field = model.model_fields.get(name)
    if field is None:
        return "unknown"
    text = str(field.annotation)
    for kind in ("bool", "int", "str"):
        if kind in text:
            return kind
    return "str"


@functools.cache
def _empty_cell(model: type[UpstreamRecord], name: str) -> str | None:
    if name in model.EMPTY_STRING_FIELDS:
        return ""
    if model.EMPTY_STRING_BY_DEFAULT and name not in getattr(model, "NULL_WHEN_EMPTY", ()):
        kind = _field_kind(model, name)
        return "" if kind in ("str", "unknown") else None
    return None


def _typed_cell(model: type[UpstreamRecord], name: str, cell: str) -> Any:
    if cell == "":
        return _empty_cell(model, name)
    kind = _field_kind(model, name)
    if kind == "int" or (kind == "unknown" and re.fullmatch(r"-?\d+", cell)):
        try:
            return int(cell)
        except ValueError:
            return cell  # the model rejects it with the field named
    if kind == "bool":
        return {"true": True, "false": False}.get(cell, cell)
    return cell


def records_from_csv(model: type[UpstreamRecord], text: str) -> list[dict[str, Any]]:
    """The records of a CSV payload, typed as the upstream's JSON would have them."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    records = []
    for number, row in enumerate(reader, start=2):
        if len(row) != len(header):
            raise ValueError(f"CSV line {number}: {len(row)} cells for {len(header)} columns")
        records.append(
            {name: _typed_cell(model, name, cell) for name, cell in zip(header, row, strict=True)}
        )
    return records


def model_of(resource: Resource) -> type[UpstreamRecord]:
    """The model of a resource's records."""
    if resource in (US_CURRENT, US_DAILY):
        return UsRecord
    if resource is STATES_INFO:
        return StateInfo
    return StateRecord
