"""The covidtracking.com website download ``all-states-history.csv``, converted to API records.

The website's states history is not an API file: its header is quoted, its columns are ``date``,
``state`` and then the others in alphabetical order, dates are ISO (``"2021-03-07"``), and it has
no ``fips`` or ``hash``. :func:`website_records` turns its rows into records with the API's
conventions, to be served as ``/v1/states/daily.json|csv`` (the one place where the replay
converts a format instead of replaying bytes):

- ``date`` becomes the integer ``YYYYMMDD``;
- every other column keeps its name and the file's column order; cells are typed by
  :data:`~replay_upstream.fields.STATE_TYPES` (``state`` stays a string, integer-looking cells
  become integers, empty cells ``null``);
- records are ordered by date descending, then state A..Z, as ``/v1/states/daily`` was.
"""

from __future__ import annotations

import re

from replay_upstream.fields import STATE_TYPES
from replay_upstream.formats import Record, parse_csv

WEBSITE_FILE = "all-states-history.csv"
"""The website download's file name."""

_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def website_records(data: bytes) -> list[Record]:
    """API-style states daily records from the bytes of ``all-states-history.csv``."""
    records = parse_csv(data, STATE_TYPES)
    for number, record in enumerate(records, start=1):
        record["date"] = _api_date(record.get("date"), number)
    return sorted(records, key=lambda r: (-_int(r["date"]), str(r.get("state") or "")))


def _api_date(value: object, number: int) -> int:
    """``"2021-03-07"`` (or an already converted ``20210307``) as ``20210307``."""
    if isinstance(value, int) and not isinstance(value, bool) and len(str(value)) == 8:
        return value
    match = _ISO_DATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{WEBSITE_FILE} record {number}: date {value!r} is not YYYY-MM-DD")
    return int("".join(match.groups()))


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
