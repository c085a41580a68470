"""The upstream record models: the real upstream's quirks pass, broken records do not."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from covid_stats_contract.models import StateInfo, StateRecord, UsRecord, records_from_csv
from covid_stats_contract.records import UpstreamState
from covid_stats_contract.resources import STATES_CURRENT, STATES_DAILY
from stats_fetcher.validation import Rejected, parse_payload

pytestmark = pytest.mark.unit  # `make test-fast`

STATE = {"date": 20210306, "state": "CA", "positive": 10, "fips": "06"}


@pytest.mark.parametrize(
    "record",
    [
        STATE,
        {**STATE, "dateModified": "2021-03-06T24:00:00Z"},  # hour 24 (end of the day)
        {**STATE, "dateChecked": "2020-09-01T03:59:00.123Z"},
        {**STATE, "positive": None, "grade": "", "dataQualityGrade": "#REF!"},
        {**STATE, "positiveIncrease": -12, "negativeIncrease": -27925},  # corrections
        {**STATE, "aFieldAddedLater": 5, "anotherOne": "text"},  # unknown fields are kept
    ],
)
def test_quirks_of_the_real_upstream_are_accepted(record: dict[str, Any]) -> None:
    parsed = StateRecord.model_validate(record)
    assert parsed.model_extra is not None
    assert {**parsed.model_dump(exclude_unset=True), **parsed.model_extra} == record


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({k: v for k, v in STATE.items() if k != "positive"}, "positive"),  # renamed away
        ({**STATE, "date": "2021-03-06"}, "date"),  # a changed type
        ({**STATE, "positive": "10"}, "positive"),  # numbers as strings
        ({**STATE, "positive": -1}, "positive"),
        ({**STATE, "newCount": -1}, "negative count"),
        ({**STATE, "date": 20210230}, "date"),
        ({**STATE, "state": "California"}, "state"),
        ({**STATE, "fips": 6}, "fips"),
        ({**STATE, "dateModified": "2021-03-06T24:01:00Z"}, "dateModified"),
        ({**STATE, "dateModified": "03/06/2021"}, "dateModified"),
        ({**STATE, "nested": {"a": 1}}, "nested"),
    ],
)
def test_broken_records_are_rejected_with_the_field_named(
    record: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        StateRecord.model_validate(record)


def test_csv_cells_are_typed_as_the_upstream_json_types_them() -> None:
    text = (
        "date,state,positive,pending,fips,grade,lastUpdateEt,totalTestResultsSource,extra\n"
        "20200901,AK,6160,,02,,9/1/2020 03:59,posNeg,7\n"
    )
    assert records_from_csv(StateRecord, text) == [
        {
            "date": 20200901,
            "state": "AK",
            "positive": 6160,
            "pending": None,
            "fips": "02",
            "grade": "",
            "lastUpdateEt": "9/1/2020 03:59",
            "totalTestResultsSource": "posNeg",
            "extra": 7,
        }
    ]
    info = records_from_csv(StateInfo, "state,name,notes,pui,pum\nAK,Alaska,,,false\n")
    assert info == [{"state": "AK", "name": "Alaska", "notes": None, "pui": "", "pum": False}]
    us = records_from_csv(UsRecord, "date,positive\n20200901,5\n")
    assert us == [{"date": 20200901, "positive": 5}]


def test_a_csv_row_with_the_wrong_number_of_cells_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        records_from_csv(StateRecord, "date,state\n20200901,AK,extra\n")


def _payload(records: list[dict[str, Any]]) -> bytes:
    import json

    return json.dumps(records).encode()


def _last(jurisdictions: int, count: int) -> UpstreamState:
    from datetime import UTC, datetime

    return UpstreamState("states/current", None, None, "h", count, jurisdictions, datetime.now(UTC))


STATES = [{**STATE, "state": code} for code in ("AK", "AL", "AR", "AZ", "CA", "CO", "CT", "DC")]


@pytest.mark.parametrize(
    ("body", "last", "reason"),
    [
        (b'[{"date": 2020', None, "invalid_body"),  # truncated
        (b'{"date": 20200901}', None, "invalid_body"),  # not an array
        (b"[]", None, "empty"),
        (_payload([*STATES, STATES[0]]), None, "duplicate_keys"),
        (_payload([{**STATES[0], "date": 29991231}, *STATES[1:]]), None, "future_date"),
        (_payload(STATES[:6]), _last(8, 8), "fewer_jurisdictions"),
        (_payload([{**STATES[0], "positive": "x"}]), None, "schema"),
    ],
)
def test_payload_checks(body: bytes, last: UpstreamState | None, reason: str) -> None:
    with pytest.raises(Rejected) as rejected:
        parse_payload(STATES_CURRENT, "json", body, last, date(2021, 3, 7))
    assert rejected.value.reason == reason


def test_a_payload_as_large_as_the_last_good_one_passes() -> None:
    records = parse_payload(STATES_DAILY, "json", _payload(STATES), _last(8, 8), date(2021, 3, 7))
    assert len(records) == 8
