"""Properties of the api's query parameters, checked with hypothesis against the real api.

One stack for the whole module (``stacks.loaded_stack``): a PostgreSQL database and a Redis
database of its own holding the session's published data (one real `stats-fetcher
refresh-once` of the replay upstream, cloned), and the api under real gunicorn (2 workers).
Every property compares the api's answer to a query with the same question answered
client-side from the api's own unparametrized documents (the upstream's records):

- ``fields=``: exactly the requested fields, in the records' own key order, values unchanged;
- ``sort=[-]field``: numbers in order, nulls last, the same records;
- ``from``/``to``/``lastdays``: the unfiltered list filtered client-side, same order;
- ``states=``: exactly those states' records, in the default order;
- the JSON and CSV forms of a query hold the same records;
- garbage in any parameter answers 200, 404 or 422 (never 5xx), 422 naming the parameter;
- a query asked twice answers the same bytes and ETag, the second time from the cache, and
  so does any other spelling of it (``api.params``: one cache key per question);
- an unknown state answers 404 ``unknown_state`` whatever the query;
- ``from``/``to`` accept exactly the documented YYYYMMDD and YYYY-MM-DD.

Hypothesis runs derandomized (the same examples every run) with no example database.
``test_found_by_the_properties`` keeps the failures the properties found as plain requests.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stacks import Template, loaded_stack
from support import Upstream

Record = dict[str, Any]

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def examples(n: int) -> settings:
    return settings(PROPERTY, max_examples=n)


# --- the stack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    key: str  # "states/daily", or "states/{st}/daily" for the per-state path
    dated: bool  # takes from / to / lastdays
    by_states: bool  # takes states=
    per_state: bool = False

    def path(self, fmt: str, state: str | None = None) -> str:
        if self.per_state:
            assert state is not None
            return f"/v1/states/{quote(state, safe='')}/daily.{fmt}"
        return f"/v1/{self.key}.{fmt}"


US_DAILY = Endpoint("us/daily", dated=True, by_states=False)
STATES_DAILY = Endpoint("states/daily", dated=True, by_states=True)
STATES_CURRENT = Endpoint("states/current", dated=False, by_states=True)
STATE_DAILY = Endpoint("states/{st}/daily", dated=True, by_states=False, per_state=True)
ENDPOINTS = (US_DAILY, STATES_DAILY, STATES_CURRENT, STATE_DAILY)


class World:
    """The running api, an HTTP client to it, and its unparametrized documents."""

    def __init__(self, base: str, client: httpx.Client, lists: dict[str, list[Record]]) -> None:
        self.base = base
        self.client = client
        self.lists = lists
        self.per_state: dict[str, list[Record]] = {}
        self._names: dict[str, list[str]] = {}
        self._numeric: dict[str, list[str]] = {}

    def __repr__(self) -> str:  # short: hypothesis prints it with every failing example
        return f"World({self.base!r})"

    @property
    def codes(self) -> list[str]:
        return sorted({r["state"] for r in self.lists["states/current"]})

    def records(self, endpoint: Endpoint, state: str | None = None) -> list[Record]:
        """The endpoint's records without parameters (for the per-state path, that state's)."""
        if not endpoint.per_state:
            return self.lists[endpoint.key]
        assert state is not None
        code = state.upper()
        if code not in self.per_state:
            self.per_state[code] = self.get_json(endpoint.path("json", code))
        return self.per_state[code]

    def names(self, endpoint: Endpoint) -> list[str]:
        """Every field of the endpoint's records, in first-seen order."""
        key = "states/daily" if endpoint.per_state else endpoint.key
        if key not in self._names:
            ref = self.lists[key]
            self._names[key] = list(dict.fromkeys(name for record in ref for name in record))
        return self._names[key]

    def numeric(self, endpoint: Endpoint) -> list[str]:
        """The fields whose values are numbers or null (and at least once a number)."""
        key = "states/daily" if endpoint.per_state else endpoint.key
        if key not in self._numeric:
            ref = self.lists[key]
            self._numeric[key] = [
                name
                for name in self.names(endpoint)
                if all(_number(r.get(name)) or r.get(name) is None for r in ref)
                and any(_number(r.get(name)) for r in ref)
            ]
        return self._numeric[key]

    def get(self, path: str, params: Mapping[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.client.get(path, params=params, **kw)

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        return response.json()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def world(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    log_dir = tmp_path_factory.mktemp("api-properties")
    with (
        # The properties hold for any question: none is refused for its size here (the
        # limit's own test is test_query_cache.py's).
        loaded_stack(
            template, redis_server_url, upstream_server, log_dir, QUERY_ANSWER_MAX_BYTES=str(2**30)
        ) as (base, _),
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        lists = {
            endpoint.key: client.get(endpoint.path("json")).json()
            for endpoint in ENDPOINTS
            if not endpoint.per_state
        }
        assert all(lists.values()), "the fetcher loaded no records"
        yield World(base, client, lists)


# --- queries and the client-side answer -----------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One question to an endpoint, its parameters spelled as they are sent."""

    endpoint: Endpoint
    state: str | None = None  # the per-state path's code, as sent
    fields: tuple[str, ...] = ()
    sort: str | None = None  # "positive" or "-positive"
    date_from: str | None = None
    date_to: str | None = None
    lastdays: int | None = None
    states: str | None = None

    def path(self, fmt: str = "json") -> str:
        return self.endpoint.path(fmt, self.state)

    def params(self) -> dict[str, str]:
        params = {
            "fields": ",".join(self.fields) if self.fields else None,
            "sort": self.sort,
            "from": self.date_from,
            "to": self.date_to,
            "lastdays": None if self.lastdays is None else str(self.lastdays),
            "states": self.states,
        }
        return {k: v for k, v in params.items() if v is not None}

    def url(self, fmt: str = "json") -> str:
        return str(httpx.URL(self.path(fmt), params=self.params()))

    @property
    def sort_field(self) -> str | None:
        return None if self.sort is None else self.sort.removeprefix("-")


def _day(text: str) -> int:
    return int(text.replace("-", ""))


def filtered(world: World, query: Query) -> list[Record]:
    """The query's records, answered client-side: before any sort or projection."""
    rows = world.records(query.endpoint, query.state)
    if query.states is not None:
        codes = {part.strip().upper() for part in query.states.split(",") if part.strip()}
        rows = [r for r in rows if r["state"] in codes]
    if query.lastdays is not None:
        recent = set(sorted({r["date"] for r in rows}, reverse=True)[: query.lastdays])
        rows = [r for r in rows if r["date"] in recent]
    if query.date_from is not None:
        rows = [r for r in rows if r["date"] >= _day(query.date_from)]
    if query.date_to is not None:
        rows = [r for r in rows if r["date"] <= _day(query.date_to)]
    return rows


def project(rows: list[Record], fields: tuple[str, ...]) -> list[Record]:
    if not fields:
        return rows
    wanted = set(fields)
    return [{k: v for k, v in r.items() if k in wanted} for r in rows]


def expected(world: World, query: Query) -> list[Record]:
    """The answer to an unsorted query, computed client-side."""
    assert query.sort is None
    return project(filtered(world, query), query.fields)


def difference(got: list[Record], want: list[Record]) -> str:
    """Empty when both hold the same records, with the same keys in the same order."""
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if list(g.items()) != list(w.items()):
            return f"record {i}:\n got  {g}\n want {w}"
    if len(got) != len(want):
        return f"{len(got)} records, expected {len(want)}"
    return ""


def fetch_list(world: World, query: Query, fmt: str = "json") -> list[Record]:
    """The api's answer to a valid query: must be 200 and a JSON array of objects."""
    response = world.get(query.path(fmt), query.params())
    assert response.status_code == 200, f"GET {query.url(fmt)}: {response.text[:500]}"
    body = response.json()
    assert isinstance(body, list), f"GET {query.url(fmt)}: not an array"
    return body


_INT = re.compile(r"-?(0|[1-9][0-9]*)\Z")


def _typed(text: str) -> Any:
    """A CSV cell as the JSON value it stands for: empty is null, integers are ints."""
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    return int(text) if _INT.match(text) else text


def parse_csv(body: str) -> list[Record]:
    rows = list(csv.reader(io.StringIO(body)))
    if not rows or not rows[0]:
        assert all(not row for row in rows), f"rows without a header: {body[:200]!r}"
        return []
    header, *rest = rows
    assert all(len(row) == len(header) for row in rest), "ragged CSV"
    return [dict(zip(header, map(_typed, row), strict=True)) for row in rest]


def as_csv_sees_it(record: Record) -> Record:
    """A JSON record as its CSV row reads back: "" reads as null, "123" as 123."""
    return {k: _typed(v) if isinstance(v, str) else v for k, v in record.items()}


def assert_error(response: httpx.Response, status: int, parameter: str | None) -> Record:
    """The one error shape: {"error": {"status", "code", "message"[, "parameter"]}}."""
    what = f"{response.request.method} {response.request.url}"
    assert response.status_code == status, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"] == "application/json", what
    body = response.json()
    assert set(body) == {"error"}, f"{what}: {body}"
    error: Record = body["error"]
    keys = {"status", "code", "message"} | ({"parameter"} if parameter is not None else set())
    assert set(error) == keys, f"{what}: {error}"
    assert error["status"] == status, f"{what}: {error}"
    assert isinstance(error["code"], str), f"{what}: {error}"
    assert isinstance(error["message"], str), f"{what}: {error}"
    assert error["message"], f"{what}: {error}"
    assert error.get("parameter") == parameter, f"{what}: {error}"
    return error


# --- strategies -----------------------------------------------------------------------------


def random_case(text: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from([c.lower(), c.upper()]) for c in text)).map("".join)


def days(world: World) -> st.SearchStrategy[str]:
    """A date around the data's range, as YYYYMMDD or YYYY-MM-DD."""
    dates = [r["date"] for r in world.lists["us/daily"]]
    first = date(min(dates) // 10000, min(dates) // 100 % 100, min(dates) % 100)
    last = date(max(dates) // 10000, max(dates) // 100 % 100, max(dates) % 100)
    return st.tuples(
        st.dates(first - timedelta(days=5), last + timedelta(days=5)),
        st.sampled_from(["%Y%m%d", "%Y-%m-%d"]),
    ).map(lambda day_format: day_format[0].strftime(day_format[1]))


def field_lists(world: World, endpoint: Endpoint) -> st.SearchStrategy[tuple[str, ...]]:
    """A non-empty selection of real field names: any order, maybe duplicates."""
    names = world.names(endpoint)
    return st.lists(st.sampled_from(names), min_size=1, max_size=6).map(tuple)


def states_params(world: World) -> st.SearchStrategy[str]:
    """Real state codes, any case, maybe repeated, with spaces around some."""
    code = st.sampled_from(world.codes).flatmap(random_case)
    spaced = st.tuples(st.sampled_from(["", " ", "  "]), code, st.sampled_from(["", " "]))
    return st.lists(spaced.map("".join), min_size=1, max_size=6).map(",".join)


@st.composite
def queries(
    draw: st.DrawFn,
    world: World,
    endpoints: tuple[Endpoint, ...] = ENDPOINTS,
    *,
    fields: bool | None = None,
    sort: bool | None = None,
    dates: bool | None = None,
    states: bool | None = None,
) -> Query:
    """A valid query; each option True (always), False (never) or None (maybe)."""

    def wanted(option: bool | None) -> bool:
        return option if option is not None else draw(st.booleans())

    endpoint = draw(st.sampled_from(endpoints))
    query = Query(endpoint)
    if endpoint.per_state:
        query = replace(query, state=draw(st.sampled_from(world.codes).flatmap(random_case)))
    if wanted(fields):
        query = replace(query, fields=draw(field_lists(world, endpoint)))
    if wanted(sort):
        name = draw(st.sampled_from(world.numeric(endpoint)))
        query = replace(query, sort=draw(st.sampled_from(["", "-"])) + name)
        if query.fields:  # the sort field comes back: its order can be checked
            query = replace(query, fields=(*query.fields, name))
    if endpoint.dated and wanted(dates):
        lo, hi = draw(st.none() | days(world)), draw(st.none() | days(world))
        if lo is not None and hi is not None and _day(lo) > _day(hi):
            lo, hi = hi, lo
        n = draw(st.none() | st.integers(1, 40) | st.integers(1, 10000))
        if lo is None and hi is None and n is None:
            n = draw(st.integers(1, 20))
        query = replace(query, date_from=lo, date_to=hi, lastdays=n)
    if endpoint.by_states and wanted(states):
        query = replace(query, states=draw(states_params(world)))
    return query


# --- the properties -------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_fields_are_the_requested_ones_in_the_records_own_order(
    world: World, data: st.DataObject
) -> None:
    query = data.draw(queries(world, fields=True, sort=False, dates=False, states=False))
    if query.endpoint == STATES_DAILY and data.draw(st.booleans()):
        query = replace(query, lastdays=data.draw(st.integers(1, 30)))  # a smaller answer
    got = fetch_list(world, query)
    want = expected(world, query)
    assert got, f"GET {query.url()}: no records"
    assert all(set(record) <= set(query.fields) for record in got), query.url()
    assert not difference(got, want), f"GET {query.url()}: {difference(got, want)}"


@PROPERTY
@given(data=st.data())
def test_sort_puts_numbers_in_order_and_nulls_last(world: World, data: st.DataObject) -> None:
    query = data.draw(queries(world, sort=True, dates=None, states=None))
    name = query.sort_field
    assert name is not None
    got = fetch_list(world, query)
    values = [record[name] for record in got]
    numbers = [v for v in values if v is not None]
    assert all(v is None for v in values[len(numbers) :]), f"{query.url()}: a null before a number"
    assert all(_number(v) for v in numbers), query.url()
    descending = query.sort is not None and query.sort.startswith("-")
    assert numbers == sorted(numbers, reverse=descending), f"{query.url()}: out of order"
    want = project(filtered(world, query), query.fields)
    key = repr  # records as comparable values (same keys in the same order)
    assert Counter(map(key, got)) == Counter(map(key, want)), (
        f"GET {query.url()}: not the same records as the unsorted query"
    )


@examples(40)
@given(data=st.data())
def test_date_filters_equal_the_series_filtered_client_side(
    world: World, data: st.DataObject
) -> None:
    query = data.draw(
        queries(
            world,
            (US_DAILY, STATES_DAILY, STATE_DAILY),
            fields=False,
            sort=False,
            dates=True,
            states=None,
        )
    )
    if query.date_from and query.date_to and _day(query.date_from) < _day(query.date_to):
        # The same dates the wrong way round: 422 naming `from`.
        swapped = replace(query, date_from=query.date_to, date_to=query.date_from)
        assert_error(world.get(swapped.path(), swapped.params()), 422, "from")
    got = fetch_list(world, query)
    series = filtered(world, replace(query, date_from=None, date_to=None, lastdays=None))
    lo = _day(query.date_from) if query.date_from else 0
    hi = _day(query.date_to) if query.date_to else 99999999
    assert all(lo <= r["date"] <= hi for r in got), f"{query.url()}: a date out of range"
    if query.lastdays is not None:
        recent = sorted({r["date"] for r in series}, reverse=True)[: query.lastdays]
        if query.date_from is None and query.date_to is None:
            assert sorted({r["date"] for r in got}, reverse=True) == recent, (
                f"{query.url()}: not the {query.lastdays} most recent dates"
            )
        assert all(r["date"] in recent for r in got), f"{query.url()}: an older date"
    want = expected(world, query)
    assert not difference(got, want), f"GET {query.url()}: {difference(got, want)}"


@PROPERTY
@given(data=st.data())
def test_states_gives_exactly_those_states_in_the_default_order(
    world: World, data: st.DataObject
) -> None:
    query = data.draw(
        queries(
            world, (STATES_DAILY, STATES_CURRENT), fields=None, sort=False, dates=None, states=True
        )
    )
    assert query.states is not None
    codes = {part.strip().upper() for part in query.states.split(",")}
    got = fetch_list(world, query)
    assert {r["state"] for r in filtered(world, query)} <= codes
    if "state" in query.fields or not query.fields:
        assert {r["state"] for r in got} <= codes, f"{query.url()}: another state"
    want = expected(world, query)
    assert not difference(got, want), f"GET {query.url()}: {difference(got, want)}"


@PROPERTY
@given(data=st.data())
def test_the_json_and_csv_forms_hold_the_same_records(world: World, data: st.DataObject) -> None:
    query = data.draw(queries(world))
    as_json = fetch_list(world, query, "json")
    response = world.get(query.path("csv"), query.params())
    assert response.status_code == 200, f"GET {query.url('csv')}: {response.text[:300]}"
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    as_csv = parse_csv(response.text)
    want = [as_csv_sees_it(r) for r in as_json]
    assert not difference(as_csv, want), f"GET {query.url('csv')}: {difference(as_csv, want)}"
    if as_json:  # the header: every key of the JSON records, in their order
        header = next(csv.reader(io.StringIO(response.text)))
        assert header == list(dict.fromkeys(k for r in as_json for k in r)), query.url("csv")


@PROPERTY
@given(data=st.data())
def test_the_same_query_twice_answers_the_same_bytes_the_second_time_from_the_cache(
    world: World, data: st.DataObject
) -> None:
    query = data.draw(queries(world))
    fmt = data.draw(st.sampled_from(["json", "csv"]))
    path, params = query.path(fmt), query.params()
    first = world.get(path, params)
    # A new connection for the second: it may reach the other gunicorn worker.
    second = httpx.get(f"{world.base}{path}", params=params, timeout=60)
    for response in (first, second):
        assert response.status_code == 200, f"GET {query.url(fmt)}: {response.text[:300]}"
    assert first.headers["x-data-source"] in ("cache", "database")
    # An answer that selects nothing is never cached (it costs no query either).
    selects = (first.json() if fmt == "json" else first.text.strip()) not in ([], "")
    source = "cache" if selects else "database"
    assert second.headers["x-data-source"] == source, f"GET {query.url(fmt)}: {source}?"
    assert second.content == first.content, f"GET {query.url(fmt)}: another body"
    assert second.headers["etag"] == first.headers["etag"], f"GET {query.url(fmt)}: another tag"
    third = world.get(path, params, headers={"If-None-Match": first.headers["etag"]})
    assert third.status_code == 304, f"GET {query.url(fmt)} If-None-Match: {third.status_code}"
    assert third.content == b""


@st.composite
def respellings(draw: st.DrawFn, query: Query) -> Query:
    """The same question spelled otherwise: fields reordered and repeated, states reordered,
    recased, repeated and spaced, dates in the other documented form, the state in another
    case."""

    def other_form(day: str | None) -> str | None:
        if day is None:
            return None
        digits = day.replace("-", "")
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}" if "-" not in day else digits

    fields = query.fields
    if fields:
        unique = list(dict.fromkeys(fields))
        fields = tuple(draw(st.permutations(unique)))
        fields += tuple(draw(st.lists(st.sampled_from(unique), max_size=2)))
    states = query.states
    if states is not None:
        codes = [part.strip() for part in states.split(",")]
        shuffled = draw(st.permutations(codes))
        states = ", ".join([draw(random_case(code)) for code in shuffled] + [shuffled[0]])
    state = None if query.state is None else draw(random_case(query.state))
    return replace(
        query,
        fields=fields,
        states=states,
        state=state,
        date_from=other_form(query.date_from),
        date_to=other_form(query.date_to),
    )


_FRESH = itertools.count()


@PROPERTY
@given(data=st.data())
def test_every_spelling_of_a_question_shares_one_cache_entry(
    world: World, data: st.DataObject
) -> None:
    """``api.params``: a query's cache key "is the same for every spelling of the same
    question (case, order, duplicates)"; after one spelling, another answers from the cache
    (unless it selects nothing: such answers are never cached). Each example adds a
    ``lastdays`` larger than the series: it filters nothing, and (``reads.canonical``) the
    key is the one without it."""
    query = data.draw(
        queries(world, (US_DAILY, STATES_DAILY, STATE_DAILY), fields=True, dates=None)
    )
    query = replace(query, lastdays=5000 + next(_FRESH) % 5000)
    fmt = data.draw(st.sampled_from(["json", "csv"]))
    again = data.draw(respellings(query))
    first = world.get(query.path(fmt), query.params())
    second = world.get(again.path(fmt), again.params())
    what = f"GET {query.url(fmt)} then GET {again.url(fmt)}"
    assert first.status_code == second.status_code == 200, f"{what}: {second.text[:300]}"
    assert second.content == first.content, f"{what}: another body"
    assert second.headers["etag"] == first.headers["etag"], f"{what}: another tag"
    selects = (first.json() if fmt == "json" else first.text.strip()) not in ([], "")
    source = "cache" if selects else "database"
    assert second.headers["x-data-source"] == source, f"{what}: not from the {source}"


# Garbage: random text of every size, including unicode, control characters and the empty
# string, and texts close to valid ones.
NEAR_MISSES = [
    "",
    " ",
    ",",
    ",,",
    "-",
    "+",
    "--positive",
    "-+positive",
    "0",
    "-1",
    "1e3",
    "10001",
    "99999999999999999999",
    "20200230",
    "2020-02-30",
    "00000101",
    "99991231",
    "ca,",
    "c1",
    "date,",
    "date,,state",
    "positive\x00",
    "%00",
    "'; DROP TABLE states_daily; --",
    "\u0662\u0660\u0662\u0660\u0660\u0664\u0660\u0661",
    "\n",
    ".",
    "..",
]
GARBAGE = st.one_of(
    st.sampled_from(NEAR_MISSES),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.builds(
        lambda chunk, n: chunk * n,
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=4),
        st.integers(100, 300),  # up to ~14 kB encoded: under the 16 KiB head limit
    ),
)
QUERY_PARAMETERS = {
    US_DAILY: ("fields", "sort", "from", "to", "lastdays"),
    STATES_DAILY: ("fields", "sort", "from", "to", "lastdays", "states"),
    STATES_CURRENT: ("fields", "sort", "states"),
    STATE_DAILY: ("state", "fields", "sort", "from", "to", "lastdays"),
}


@examples(200)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    fmt=st.sampled_from(["json", "csv"]),
    choice=st.integers(0, 5),
    value=GARBAGE,
)
def test_garbage_in_any_parameter_answers_200_404_or_422_naming_it(
    world: World, endpoint: Endpoint, fmt: str, choice: int, value: str
) -> None:
    names = QUERY_PARAMETERS[endpoint]
    parameter = names[choice % len(names)]
    if parameter == "state":
        path, params = endpoint.path(fmt, value), {}
    else:
        path, params = endpoint.path(fmt, "ca"), {parameter: value}
    response = world.get(path, params)
    what = f"GET {response.request.url}"
    assert response.status_code in (200, 404, 422), f"{what}: {response.status_code}"
    if response.status_code == 422:
        assert_error(response, 422, parameter)
        assert response.json()["error"]["code"] == "invalid_parameter"
    elif response.status_code == 404:
        assert response.headers["content-type"] == "application/json", what
        error = response.json()["error"]
        assert error["code"] in ("not_found", "unknown_state"), what
        if error["code"] == "unknown_state":
            assert parameter == "state", what
            assert_error(response, 404, "state")
        else:
            assert_error(response, 404, None)
    elif fmt == "json":
        assert isinstance(response.json(), list), what


@examples(20)
@given(data=st.data(), code=st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=2))
def test_an_unknown_state_answers_404_whatever_the_query(
    world: World, data: st.DataObject, code: str
) -> None:
    if code.upper() in world.codes:
        code = "zz"
    query = data.draw(queries(world, (STATE_DAILY,)))
    query = replace(query, state=data.draw(random_case(code)))
    for fmt in ("json", "csv"):
        response = world.get(query.path(fmt), query.params())
        error = assert_error(response, 404, "state")
        assert error["code"] == "unknown_state", f"GET {query.url(fmt)}"


_DOCUMENTED_DATE = re.compile(r"(\d{8}|\d{4}-\d{2}-\d{2})\Z", re.ASCII)


def _real_date(text: str) -> bool:
    digits = text.replace("-", "")
    try:
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return False
    return True


@examples(100)
@given(
    parameter=st.sampled_from(["from", "to"]),
    value=st.one_of(
        st.dates(date(2019, 1, 1), date(2021, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
        st.dates(date(2019, 1, 1), date(2021, 12, 31)).map(lambda d: d.strftime("%Y-%m-%d")),
        st.from_regex(r"\A[0-9-]{6,10}\Z", fullmatch=True),
        st.from_regex(r"\A\d{8}\n?\Z", fullmatch=True),
        st.sampled_from(
            [
                "2020-0401",
                "202004-01",
                "20200401\n",
                "\uff12\uff10\uff12\uff10\uff10\uff14\uff10\uff11",
            ]
        ),
    ),
)
def test_from_and_to_accept_exactly_the_documented_date_forms(
    world: World, parameter: str, value: str
) -> None:
    """`from`/`to` are documented as YYYYMMDD or YYYY-MM-DD: those (real dates) answer 200,
    anything else 422 naming the parameter."""
    response = world.get(US_DAILY.path("json"), {parameter: value, "lastdays": "3"})
    if _DOCUMENTED_DATE.match(value) and _real_date(value):
        assert response.status_code == 200, f"GET {response.request.url}: {response.text}"
    else:
        assert_error(response, 422, parameter)


# Found by the properties above; kept as plain examples so they fail on every run.
REGRESSIONS = [
    # Real field names rejected as "no such field" when no record matches the filters.
    ("/v1/us/daily.json?from=20250101&fields=date", 200, None),
    ("/v1/us/daily.csv?to=20190101&sort=-positive", 200, None),
    ("/v1/states/daily.json?states=ca&from=20250101&fields=state,date", 200, None),
    ("/v1/states/ca/daily.json?from=20250101&fields=date", 200, None),
    # An unknown state answers 422 naming `fields`/`sort` instead of 404 naming `state`.
    ("/v1/states/zz/daily.json?fields=date", 404, "state"),
    ("/v1/states/zz/daily.csv?sort=positive", 404, "state"),
    # Dates outside the documented YYYYMMDD / YYYY-MM-DD forms are accepted.
    ("/v1/us/daily.json?from=20200830%0A", 422, "from"),
    ("/v1/us/daily.json?to=2020-0302", 422, "to"),
    ("/v1/us/daily.json?from=%D9%A2%D9%A0%D9%A2%D9%A0%D9%A0%D9%A8%D9%A0%D9%A1", 422, "from"),
]


@pytest.mark.parametrize(("url", "status", "parameter"), REGRESSIONS)
def test_found_by_the_properties(
    world: World, url: str, status: int, parameter: str | None
) -> None:
    response = world.client.get(url)
    if status == 200:
        assert response.status_code == 200, f"GET {url}: {response.status_code} {response.text}"
        body = response.json() if url.split("?")[0].endswith(".json") else None
        assert body in ([], None), f"GET {url}: {response.text[:200]}"
    else:
        assert_error(response, status, parameter)


def test_fields_in_another_order_answer_from_the_cache(world: World) -> None:
    """Found by the spelling property: the cache key keeps the order of ``fields``."""
    first = world.client.get("/v1/states/daily.json?fields=state,date,death&lastdays=5")
    second = world.client.get("/v1/states/daily.json?fields=death,date,state&lastdays=5")
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["x-data-source"] == "cache"
