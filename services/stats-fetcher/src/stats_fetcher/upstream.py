"""The upstream API: which resources the fetcher reads, fetching them, and validating them.

The api serves each resource under the upstream's own path, so a resource's document name in
the contract is its upstream path without the leading slash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from covid_stats_contract.documents import STATES_CURRENT, US_CURRENT

Record = dict[str, Any]

_STATE_RE = re.compile(r"^[A-Z]{2}$")


class UpstreamError(Exception):
    """A resource could not be fetched or its payload was rejected; ``reason`` says why."""

    def __init__(self, resource: str, reason: str) -> None:
        super().__init__(f"{resource}: {reason}")
        self.resource = resource
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Resource:
    document: str  # contract document name, also the upstream path without "/"
    check_record: Callable[[Record], str | None]  # None when fine, else the reason

    @property
    def path(self) -> str:
        return "/" + self.document


def _check_dated(record: Record) -> str | None:
    date = record.get("date")
    if type(date) is not int or not 20000101 <= date <= 99991231:
        return f"bad date {date!r}"
    return None


def _check_state(record: Record) -> str | None:
    state = record.get("state")
    if not isinstance(state, str) or not _STATE_RE.match(state):
        return f"bad state {state!r}"
    return _check_dated(record)


US_CURRENT_RESOURCE = Resource(US_CURRENT, _check_dated)
STATES_CURRENT_RESOURCE = Resource(STATES_CURRENT, _check_state)
RESOURCES = (US_CURRENT_RESOURCE, STATES_CURRENT_RESOURCE)


async def fetch_records(client: httpx.AsyncClient, resource: Resource) -> list[Record]:
    """GET one resource and return its validated records; raises UpstreamError."""
    try:
        response = await client.get(resource.path)
    except httpx.HTTPError as exc:
        raise UpstreamError(resource.document, f"request failed: {exc!r}") from exc
    if response.status_code != httpx.codes.OK:
        raise UpstreamError(resource.document, f"HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "")
    if "json" not in content_type:
        raise UpstreamError(resource.document, f"unexpected content type {content_type!r}")
    return parse_records(resource, response.content)


def parse_records(resource: Resource, body: bytes) -> list[Record]:
    """Decode and validate a payload: a non-empty JSON array of records."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise UpstreamError(resource.document, f"invalid JSON ({exc})") from exc
    if not isinstance(payload, list) or not payload:
        raise UpstreamError(resource.document, "expected a non-empty JSON array")
    for index, record in enumerate(payload):
        if not isinstance(record, dict):
            raise UpstreamError(resource.document, f"record {index} is not an object")
        problem = resource.check_record(record)
        if problem:
            raise UpstreamError(resource.document, f"record {index}: {problem}")
    return payload
