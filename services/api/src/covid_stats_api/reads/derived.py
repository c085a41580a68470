"""Derived series: 7-day rolling averages of the daily increases, and test positivity.

Computed from a daily series (``us/daily`` or one state's daily document) in one of the
worker's computation processes (``reads.compute``; in a thread, parsing a daily document held
the GIL the event loop needs for every hot read), never on the event loop, and cached per
snapshot through the ``AnswerCache`` (concurrent requests for the same series in one worker
share one computation).

For each date, newest first: the ``<increase>Avg7d`` fields average the increase over the 7
calendar days ending that date (null unless all 7 days have a value); ``testPositivity`` is
``positiveIncrease / totalTestResultsIncrease`` of the day and ``testPositivity7d`` the same
ratio over the 7 days (null when the tests are not positive numbers).

A question may narrow the series (``from``, ``to``, ``lastdays``, as for the daily series)
and project it (``fields``): the averages are always those of the whole series (the first
dates of a range average the 7 days before them too), then the dates and fields asked for
are kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from datetime import date, timedelta
from typing import Any

import structlog
from pydantic import BaseModel

from covid_stats_api.reads.answers import AnswerCache
from covid_stats_api.reads.compute import ComputePool
from covid_stats_api.reads.documents import DocumentReader, Served
from covid_stats_api.reads.queries import Query, StoreUnavailable, UnknownField
from covid_stats_contract.documents import (
    CONTENT_TYPES,
    encode_record,
    etag_for,
    render_array,
    render_csv,
)

log = structlog.get_logger("covid_stats_api.reads.derived")

INCREASES = (
    "positiveIncrease",
    "negativeIncrease",
    "deathIncrease",
    "hospitalizedIncrease",
    "totalTestResultsIncrease",
)
WINDOW = 7


class DerivedRecord(BaseModel):
    """One date of a derived series (``state`` only in a state's series)."""

    date: int
    state: str | None = None
    positiveIncreaseAvg7d: float | None
    negativeIncreaseAvg7d: float | None
    deathIncreaseAvg7d: float | None
    hospitalizedIncreaseAvg7d: float | None
    totalTestResultsIncreaseAvg7d: float | None
    testPositivity: float | None
    testPositivity7d: float | None


def _day(value: int) -> date:
    return date(value // 10000, value // 100 % 100, value % 100)


def _ratio(positives: float | None, tests: float | None) -> float | None:
    if positives is None or tests is None or tests <= 0:
        return None
    return round(positives / tests, 4)


def derive(daily: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The derived series of a daily series (any order in, newest first out)."""
    by_day = {_day(r["date"]): r for r in daily}
    out = []
    for day in sorted(by_day, reverse=True):
        record = by_day[day]
        window = [by_day.get(day - timedelta(days=n)) for n in range(WINDOW)]
        derived: dict[str, Any] = {"date": record["date"]}
        if "state" in record:
            derived["state"] = record["state"]
        sums: dict[str, float | None] = {}
        for field in INCREASES:
            values = [w.get(field) if w else None for w in window]
            complete = all(isinstance(v, int | float) for v in values)
            sums[field] = sum(values) if complete else None  # type: ignore[arg-type]
            total = sums[field]
            derived[f"{field}Avg7d"] = None if total is None else round(total / WINDOW, 2)
        derived["testPositivity"] = _ratio(
            record.get("positiveIncrease"), record.get("totalTestResultsIncrease")
        )
        derived["testPositivity7d"] = _ratio(
            sums["positiveIncrease"], sums["totalTestResultsIncrease"]
        )
        out.append(derived)
    return out


FIELDS = tuple(DerivedRecord.model_fields)


def select(series: list[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    """The dates (``from``, ``to``, the ``lastdays`` most recent of the series) and the
    fields ``query`` asks for, of a derived series (newest first)."""
    first, last = query.date_from, query.date_to
    if query.last_days is not None and series:
        recent = series[: query.last_days][-1]["date"]
        first = recent if first is None else max(first, recent)
    kept = [
        r
        for r in series
        if (first is None or r["date"] >= first) and (last is None or r["date"] <= last)
    ]
    if query.fields:
        wanted = set(query.fields)
        kept = [{k: v for k, v in r.items() if k in wanted} for r in kept]
    return kept


def render(daily_body: bytes, query: Query) -> bytes:
    series = select(derive(json.loads(daily_body)), query)
    if query.fmt == "csv":
        return render_csv(series)
    return render_array(encode_record(r) for r in series)


def empty(query: Query) -> Served:
    """The answer to a question that selects no date (never cached)."""
    body = render_csv([]) if query.fmt == "csv" else render_array([])
    return Served(body, etag_for(body), "database", CONTENT_TYPES[query.fmt])


class DerivedService:
    def __init__(self, reader: DocumentReader, answers: AnswerCache, compute: ComputePool) -> None:
        self.reader = reader
        self.answers = answers
        self.compute = compute

    async def series(
        self, daily_document: str, query: Query, daily: Served | None = None
    ) -> Served:
        """The derived series of ``daily_document`` (or of ``daily``, that document as
        served at another time: ``as_of``), narrowed and projected as ``query`` asks; raises
        UnknownField for a field a derived record lacks, StoreUnavailable without data."""
        for name in query.fields:
            if name not in FIELDS:
                raise UnknownField("fields", name)
        key = f"derived|{daily_document}|{query.fmt}"
        if query != Query(query.resource, query.fmt):  # narrowed or projected
            key += f"|{query.key}"
        if daily is not None:
            key += f"|daily:{daily.etag}"
        return await self.answers.get(
            key, lambda _target: self._compute(daily_document, query, daily)
        )

    async def _compute(
        self, daily_document: str, query: Query, daily: Served | None = None
    ) -> Served:
        if daily is None:
            daily = await self.reader.read(daily_document)
        if daily is None:
            raise StoreUnavailable
        try:
            body = await self.compute.call(render, daily.body, query)
        except BrokenProcessPool as exc:
            log.warning("derived_compute_failed", error=repr(exc))
            raise StoreUnavailable from exc
        return Served(body, etag_for(body), daily.source, CONTENT_TYPES[query.fmt])
