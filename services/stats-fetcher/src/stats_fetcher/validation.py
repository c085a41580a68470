"""Deciding whether a payload may replace the last good data of its resource.

``parse_payload`` turns a response body into records or raises ``Rejected`` with a short
reason (for the metric) and a detail (for the log). It rejects what cannot be the real data:
a body that is not a JSON array / CSV table (a truncated body fails here), an empty list,
records that fail their model (a changed schema, a wrong type, a negative count, an
impossible date), duplicate keys, dates in the future, and far fewer jurisdictions or
records than the last good payload had.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from covid_stats_contract.models import (
    StateInfo,
    StateRecord,
    UpstreamRecord,
    UsRecord,
    model_of,
    records_from_csv,
)
from covid_stats_contract.records import UpstreamState, key_of
from covid_stats_contract.resources import (
    Format,
    Resource,
)

Record = dict[str, Any]


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_ADAPTERS: Mapping[type[UpstreamRecord], TypeAdapter[list[Any]]] = {
    UsRecord: TypeAdapter(list[UsRecord]),
    StateRecord: TypeAdapter(list[StateRecord]),
    StateInfo: TypeAdapter(list[StateInfo]),
}


def _decode(resource: Resource, fmt: Format, body: bytes) -> list[Any]:
    try:
        if fmt == "csv":
            return records_from_csv(model_of(resource), body.decode("utf-8"))
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("invalid_body", f"not valid {fmt.upper()} (truncated?): {exc}") from exc
    if not isinstance(payload, list):
        raise Rejected("invalid_body", f"expected a JSON array, got {type(payload).__name__}")
    return payload


def parse_payload(
    resource: Resource,
    fmt: Format,
    body: bytes,
    last: UpstreamState | None,
    today: date,
    *,
    max_future_days: int = 1,
    min_ratio: float = 0.9,
) -> list[Record]:
    records = _decode(resource, fmt, body)
    if not records:
        raise Rejected("empty", "the payload has no records")
    try:
        _ADAPTERS[model_of(resource)].validate_python(records)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Rejected("schema", f"record {where}: {first['msg']}") from None

    keys = {key_of(resource, record) for record in records}
    if len(keys) != len(records):
        raise Rejected("duplicate_keys", f"{len(records) - len(keys)} records share a key")
    if "date" in resource.key_columns:
        latest = max(record["date"] for record in records)
        limit = today + timedelta(days=max_future_days)
        if latest > int(limit.strftime("%Y%m%d")):
            raise Rejected("future_date", f"a record is dated {latest}, after {limit}")
    if last is not None:
        count = jurisdictions(resource, records)
        if count < min_ratio * last.jurisdictions:
            raise Rejected(
                "fewer_jurisdictions",
                f"{count} jurisdictions, the last good payload had {last.jurisdictions}",
            )
        if len(records) < min_ratio * last.record_count:
            raise Rejected(
                "fewer_records",
                f"{len(records)} records, the last good payload had {last.record_count}",
            )
    return records


def jurisdictions(resource: Resource, records: list[Record]) -> int:
    """Distinct states in a state resource; 1 (the US) for the US resources."""
    return len({record["state"] for record in records}) if resource.by_state else 1
