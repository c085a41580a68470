"""Byte formats of the CTP v1 API: compact JSON, CSV, and typed records from CSV.

The upstream wrote JSON arrays as ``[{...},{...}]`` plus a newline, with no spaces and non-ASCII
characters kept as they are, and single records (``/v1/us/20200401.json``) as one such object
plus a newline. Its CSV files use ``\\n`` line ends, minimal quoting, a header row with the
record keys in order, empty cells for ``null`` and ``""`` alike, and ``true``/``false`` for
booleans. The functions here reproduce the archived files byte for byte.

Reading CSV back needs to know which columns are strings (``fips`` is ``"02"``, not ``2``) and
which empty cells were ``""`` rather than ``null`` in the JSON; :class:`FieldTypes` says so.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Scalar = str | int | float | bool | None
"""A JSON value as the CTP records hold them: flat, never nested."""

Record = dict[str, Scalar]
"""One row of a CTP file, keys in the upstream's order."""

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]+")


def dump_json_object(record: Mapping[str, Scalar]) -> bytes:
    """Serialize one record the way the upstream served single-record paths."""
    return (_compact(record) + "\n").encode("utf-8")


def dump_json_array(records: Iterable[Mapping[str, Scalar]]) -> bytes:
    """Serialize records the way the upstream served list paths (``[{..},{..}]`` + newline)."""
    return ("[" + ",".join(_compact(r) for r in records) + "]\n").encode("utf-8")


def dump_csv(records: Sequence[Mapping[str, Scalar]]) -> bytes:
    """Serialize records as upstream CSV: header = keys in first-seen order, nulls empty."""
    header: dict[str, None] = {}
    for record in records:
        header.update(dict.fromkeys(record))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        writer.writerow([_csv_cell(record.get(key)) for key in header])
    return buffer.getvalue().encode("utf-8")


def _compact(record: Mapping[str, Scalar]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def _csv_cell(value: Scalar) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return str(value)


@dataclass(frozen=True)
class FieldTypes:
    """How to type the cells of one kind of CSV file.

    ``strings``: columns kept as text even when they look like numbers.
    ``empty_strings``: columns whose empty cells are ``""`` in the JSON (others become ``null``).
    ``booleans``: columns holding ``true``/``false``.
    """

    strings: frozenset[str] = frozenset()
    empty_strings: frozenset[str] = frozenset()
    booleans: frozenset[str] = frozenset()

    def learned_from(self, records: Iterable[Mapping[str, Scalar]]) -> FieldTypes:
        """These types, refined by what typed JSON records of the same kind show.

        A column seen holding a string is a string column; one seen holding ``""`` keeps ``""``
        for empty cells, one seen holding ``null`` (and never ``""``) gets ``null``.
        """
        strings, empty, null, booleans = set(self.strings), set(), set(), set(self.booleans)
        for record in records:
            for key, value in record.items():
                if isinstance(value, bool):
                    booleans.add(key)
                elif isinstance(value, str):
                    strings.add(key)
                    if value == "":
                        empty.add(key)
                elif value is None:
                    null.add(key)
        return FieldTypes(
            strings=frozenset(strings),
            empty_strings=frozenset((self.empty_strings - null) | empty),
            booleans=frozenset(booleans),
        )

    def cell(self, key: str, text: str) -> Scalar:
        """The JSON value of one CSV cell of column ``key``."""
        if text == "":
            return "" if key in self.empty_strings else None
        if key in self.strings:
            return text
        if key in self.booleans and text in ("true", "false"):
            return text == "true"
        if _INT.fullmatch(text):
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(text)
        return text


def parse_csv(data: bytes, types: FieldTypes) -> list[Record]:
    """Typed records from upstream CSV bytes, keys in the header's order. A column the
    header repeats (a data repository file repeated ``date``) is read from its first
    occurrence."""
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(rows, None)
    if header is None:
        return []
    first = [i for i, key in enumerate(header) if header.index(key) == i]
    records = []
    for row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"a CSV row has {len(row)} cells, the header {len(header)}")
        records.append({header[i]: types.cell(header[i], row[i]) for i in first})
    return records


def parse_json_records(data: bytes) -> list[Record]:
    """Records from an upstream JSON array (or a single object, as a one-item list)."""
    value = json.loads(data)
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("expected a JSON array of objects")
    return [dict(item) for item in items]
