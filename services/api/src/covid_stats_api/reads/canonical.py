"""A question in its canonical form: keyed by what it selects, not by how it was spelled.

``params.build`` already folds spelling (case, order, duplicates of states and fields, `+`).
Here the question is measured against the data's span (``reads.span``):

- ``lastdays=N`` becomes a first date (the N-th most recent date of the series asked), or
  nothing when N covers the series; ``from``/``to`` move to the nearest date the series
  holds, and a bound at or beyond the series' end is dropped. So ``lastdays=300``,
  ``lastdays=5000``, ``from=19990101`` and no parameter at all over 224 days are one
  question, and ``lastdays=7`` is ``from=<its first date>``.
- a sort that is the resource's own order (``sort=-date`` on a daily series, ``sort=state``
  on a states list, or the start of it) is no sort; every state the data knows is no filter.
- a question that selects nothing (a range outside the data, a date without a record) is
  ``empty``: answered without PostgreSQL and never cached.
- a question that is a published document's (nothing left to narrow, project or sort) is
  answered with that document (``document``): its bytes, from memory.
- a field no record has (``fields``, ``sort``) raises ``UnknownField``, an unknown state
  ``UnknownState``; an answer that is surely over the size limit
  raises ``TooLarge`` before anything is computed (``QueryService`` checks the real size
  after computing, for the ones the estimate cannot tell).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace

from covid_stats_api.reads.queries import Query, TooLarge, UnknownField
from covid_stats_api.reads.span import Span
from covid_stats_contract.models import model_of
from covid_stats_contract.resources import STATES_DAILY, US_DAILY, Resource

# Lower bounds of an answer's bytes per record, by format: the bytes of a JSON record
# without projection are estimated at this share of the table's mean (records differ in
# size); a CSV row at this share (no keys, no quotes).
_JSON_SHARE = 0.8
_CSV_SHARE = 0.3


class UnknownState(Exception):
    def __init__(self, codes: list[str]) -> None:
        super().__init__(", ".join(codes))
        self.codes = codes


@dataclass(frozen=True)
class Canonical:
    query: Query  # the question as it is keyed and asked of PostgreSQL
    empty: bool = False  # it selects no record
    document: str | None = None  # the published document that is its answer
    # How many records it selects in the span (None: not known): where it is computed
    # (``queries.inline``).
    rows: int | None = None


def default_order(resource: Resource) -> tuple[tuple[str, bool], ...]:
    """The resource's own order as sort keys (``date DESC, state`` -> date desc, state)."""
    keys = []
    for part in resource.order_by.split(","):
        name, *direction = part.split()
        keys.append((name, direction == ["DESC"]))
    return tuple(keys)


def _snap(
    dates: tuple[int, ...], first: int | None, last: int | None
) -> tuple[int | None, int | None, bool]:
    """``[first, last]`` moved to the dates held, open where it reaches an end; and
    whether it holds none."""
    if not dates:
        return None, None, True
    if first is not None:
        i = bisect_left(dates, first)
        if i == len(dates):
            return None, None, True
        first = None if i == 0 else dates[i]
    if last is not None:
        j = bisect_right(dates, last) - 1
        if j < 0:
            return None, None, True
        last = None if j == len(dates) - 1 else dates[j]
    if first is not None and last is not None and first > last:
        return None, None, True
    return first, last, False


def dates_of(query: Query, dates: tuple[int, ...]) -> tuple[Query, bool]:
    """``query`` with ``lastdays`` turned into a first date and its range snapped to
    ``dates`` (the series it asks, ascending); and whether it selects no date."""
    first = query.date_from
    if query.last_days is not None and query.last_days < len(dates):
        recent = dates[-query.last_days]
        first = recent if first is None else max(first, recent)
    first, last, empty = _snap(dates, first, query.date_to)
    return replace(query, date_from=first, date_to=last, last_days=None), empty


def _rows(query: Query, span: Span) -> int:
    if query.single:
        return 1
    resource = query.resource
    if resource is STATES_DAILY:
        return span.count(query.states, query.date_from, query.date_to)
    if resource is US_DAILY:
        dates = span.series(None)
        low = 0 if query.date_from is None else bisect_left(dates, query.date_from)
        high = len(dates) if query.date_to is None else bisect_right(dates, query.date_to)
        return high - low
    if resource.by_state and query.states:
        return len(query.states)
    return span.records.get(resource.key, 0)


def least_bytes(query: Query, span: Span) -> int:
    """A lower bound of the answer's size (the estimate refuses only what is surely over)."""
    rows = _rows(query, span)
    if query.fields:
        per_row = (
            sum(len(name) + 4 for name in query.fields)  # "name":v,
            if query.fmt == "json"
            else len(query.fields)  # v,
        )
        return rows * per_row
    share = _JSON_SHARE if query.fmt == "json" else _CSV_SHARE
    return int(rows * span.record_bytes.get(query.resource.key, 0) * share)


def canonical(query: Query, span: Span | None, max_bytes: int) -> Canonical:
    """``query`` keyed by what it selects in ``span`` (as asked when there is no span)."""
    resource = query.resource
    sort = query.sort
    if query.single or default_order(resource)[: len(sort)] == sort:
        sort = ()
    query = replace(query, sort=sort)
    if span is None:
        return Canonical(query)
    known = span.fields.get(resource.key, frozenset()) | model_of(resource).model_fields.keys()
    for parameter, names in (("sort", [name for name, _ in sort]), ("fields", query.fields)):
        for name in names:
            if name not in known:
                raise UnknownField(parameter, name)
    if resource.by_state and query.states:
        unknown = [code for code in query.states if code not in span.states]
        if unknown:
            raise UnknownState(unknown)
        if set(query.states) == span.states:
            query = replace(query, states=())
    empty = False
    if resource is US_DAILY or resource is STATES_DAILY:
        states = None if resource is US_DAILY else query.states
        query, empty = dates_of(query, span.series(states))
    if empty:
        return Canonical(query, empty=True)
    if not (query.fields or query.sort or query.single or query.date_from or query.date_to):
        if not query.states:
            return Canonical(query, document=resource.document(query.fmt))
        if resource.per_state_is_list and len(query.states) == 1:
            return Canonical(query, document=resource.state_document(query.states[0], query.fmt))
    least = least_bytes(query, span)
    if least > max_bytes:
        raise TooLarge(least, max_bytes, resource.document(query.fmt))
    return Canonical(query, rows=_rows(query, span))
