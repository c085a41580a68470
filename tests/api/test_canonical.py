"""Questions in their canonical form (``reads.canonical``), against a span made here: every
spelling of one selection is one key, and what a canonical question selects is what the
question asked selects (checked by brute force over the span's dates)."""

from __future__ import annotations

import itertools

import pytest

from covid_stats_api.reads.canonical import UnknownState, canonical, dates_of, default_order
from covid_stats_api.reads.queries import Query, TooLarge, UnknownField
from covid_stats_api.reads.span import US, Span
from covid_stats_contract.resources import STATES_CURRENT, STATES_DAILY, US_DAILY

pytestmark = pytest.mark.unit

CA = (20200301, 20200302, 20200303, 20200305, 20200306)  # a gap: no 20200304
NY = (20200302, 20200303, 20200304)
SPAN = Span(
    frozenset({"CA", "NY"}),
    {"CA": CA, "NY": NY, US: CA},
    {r.key: 10 for r in (US_DAILY, STATES_DAILY, STATES_CURRENT)},
    {r.key: 1000.0 for r in (US_DAILY, STATES_DAILY, STATES_CURRENT)},
    {STATES_DAILY.key: frozenset({"date", "state", "positive", "newField"})},
)
LIMIT = 1_000_000


def selected(query: Query, dates: tuple[int, ...]) -> list[int]:
    """The dates a question selects, as the SQL reads it: from, to, the N most recent."""
    recent = dates[-query.last_days :] if query.last_days else dates
    return [
        d
        for d in dates
        if d in recent
        and (query.date_from is None or d >= query.date_from)
        and (query.date_to is None or d <= query.date_to)
    ]


def test_the_canonical_question_selects_the_same_dates() -> None:
    dates = CA
    bounds = [None, 20200101, *range(20200229, 20200308), 20991231]
    keys: dict[tuple[int, ...], set[str]] = {}
    for first, last, n in itertools.product(bounds, bounds, [None, 1, 2, 4, 5, 6, 10000]):
        if first is not None and last is not None and first > last:
            continue
        asked = Query(US_DAILY, "json", date_from=first, date_to=last, last_days=n)
        canon, empty = dates_of(asked, dates)
        want = selected(asked, dates)
        assert empty == (not want), asked
        if not empty:
            assert canon.last_days is None
            assert selected(canon, dates) == want, asked
            keys.setdefault(tuple(want), set()).add(canon.key)
    assert all(len(k) == 1 for k in keys.values())  # one selection, one key


def test_spellings_of_one_question_share_a_key() -> None:
    base = Query(STATES_DAILY, "json", states=("CA",), fields=("date",))
    spellings = [
        base,
        Query(STATES_DAILY, "json", states=("CA",), fields=("date",), last_days=10000),
        Query(STATES_DAILY, "json", states=("CA",), fields=("date",), date_from=19990101),
        Query(STATES_DAILY, "json", states=("CA",), fields=("date",), sort=(("date", True),)),
        Query(STATES_DAILY, "json", states=("CA",), fields=("date",), date_to=20200306),
    ]
    assert len({canonical(q, SPAN, LIMIT).query.key for q in spellings}) == 1
    both = Query(STATES_DAILY, "json", states=("CA", "NY"), fields=("date",))
    assert canonical(both, SPAN, LIMIT).query.states == ()  # every state the data knows
    assert default_order(STATES_DAILY) == (("date", True), ("state", False))


def test_documents_empties_unknown_states_and_size() -> None:
    assert canonical(Query(US_DAILY, "csv", last_days=99), SPAN, LIMIT).document == (
        US_DAILY.document("csv")
    )
    one = canonical(Query(STATES_DAILY, "json", states=("NY",), date_from=20200101), SPAN, LIMIT)
    assert one.document == STATES_DAILY.state_document("NY")
    assert canonical(Query(US_DAILY, "json", date_from=20210101), SPAN, LIMIT).empty
    day = Query(STATES_DAILY, "json", states=("CA",), date_from=20200304, date_to=20200304)
    assert canonical(day, SPAN, LIMIT).empty  # CA has no 20200304
    with pytest.raises(UnknownState) as unknown:
        canonical(Query(STATES_CURRENT, "json", states=("CA", "ZZ")), SPAN, LIMIT)
    assert unknown.value.codes == ["ZZ"]
    # 8 records of 1000 bytes: surely over 5000 bytes, not over 8000.
    asked = Query(STATES_DAILY, "json", sort=(("positive", False),))
    with pytest.raises(TooLarge):
        canonical(asked, SPAN, 5000)
    assert canonical(asked, SPAN, 8000).query.sort == (("positive", False),)
    # Fields are checked before the size: the model's, and those the records have.
    newer = Query(STATES_DAILY, "json", fields=("newField",), sort=(("death", False),))
    assert canonical(newer, SPAN, 8000).query == newer
    for parameter, bad in (
        ("sort", Query(STATES_DAILY, "json", sort=(("nope", False),))),
        ("fields", Query(STATES_DAILY, "json", fields=("date", "nope"))),
    ):
        with pytest.raises(UnknownField) as unknown_field:
            canonical(bad, SPAN, 5000)
        assert (unknown_field.value.parameter, unknown_field.value.name) == (parameter, "nope")
