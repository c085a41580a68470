"""Edge-ready answers: every cacheable answer of the api (documents from memory and through
FastAPI, query answers, derived series, revisions, the changes feed, the envelope, CSV, 304s,
HEAD) carries the browsers' ``Cache-Control``, the edge's ``Surrogate-Control`` and the
``Surrogate-Key`` the contract (``covid_stats_contract.edge``) gives it; errors carry none.
And the keys are exact: the keys a publish that changed one state purges reach every answer
holding that state's records, and no other."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import httpx
import pytest

from covid_stats_api.core.config import Settings
from covid_stats_contract.changes import describe
from covid_stats_contract.documents import STATUS, US_CURRENT
from covid_stats_contract.edge import (
    AS_OF,
    CHANGES_KEY,
    SURROGATE_CONTROL_HEADER,
    SURROGATE_KEY_HEADER,
    document_keys,
    purge_keys,
    query_keys,
    state_key,
)
from covid_stats_contract.records import document_of
from covid_stats_contract.resources import BY_KEY, FORMATS, RESOURCES, STATES_DAILY, US_DAILY
from covid_stats_runtime.http import error_cache_control
from devstack.procs import wait_until
from stacks import Stack

# The policy a default api sends (the shared api runs with the defaults of these settings).
POLICY = Settings.model_construct().cache_policy


@pytest.fixture
def api(shared_api: Stack) -> str:
    return shared_api.base


def keys_of(response: httpx.Response) -> set[str]:
    return set(response.headers[SURROGATE_KEY_HEADER].split(" "))


def assert_edge_ready(response: httpx.Response, keys: tuple[str, ...]) -> None:
    assert response.status_code in (200, 304), (response.url, response.text[:300])
    assert response.headers["cache-control"] == POLICY.cache_control.decode()
    assert response.headers[SURROGATE_CONTROL_HEADER] == POLICY.surrogate_control.decode()
    assert response.headers[SURROGATE_KEY_HEADER] == " ".join(keys), response.url


def test_the_policy_names_every_directive() -> None:
    control = POLICY.cache_control.decode()
    assert control.startswith(f"public, max-age={POLICY.max_age}")
    assert f"stale-while-revalidate={POLICY.stale_while_revalidate}" in control
    assert f"stale-if-error={POLICY.stale_if_error}" in control
    assert POLICY.surrogate_max_age > POLICY.max_age


def published_names(api: str) -> list[str]:
    """Published documents: the status, every list, and the first three states' documents
    (the states read from ``states/info``)."""
    body = httpx.get(f"{api}/v1/states/info.json", timeout=30).json()
    states = sorted(record["state"] for record in body)
    names: list[str] = [STATUS]
    for resource in RESOURCES:
        for fmt in FORMATS:
            names.append(resource.document(fmt))
            if resource.per_state is not None:
                names += [resource.state_document(s, fmt) for s in states[:3]]
    return names


def test_every_document_answer_carries_its_keys_on_every_variant(api: str) -> None:
    """A document from memory and through FastAPI (a query string it ignores), identity,
    gzip, Brotli, a 304 and HEAD: the same three headers, its name (and state) as keys."""
    with httpx.Client(base_url=api, timeout=30) as http:
        for name in [*published_names(api), "covid-stats"]:
            keys = document_keys(US_CURRENT if name == "covid-stats" else name)
            for suffix in ("", "?ignored=1"):
                first = http.get(f"/{name}{suffix}", headers={"accept-encoding": "identity"})
                assert_edge_ready(first, keys)
                for headers in (
                    {"accept-encoding": "gzip"},
                    {"accept-encoding": "br"},
                    {"accept-encoding": "identity", "if-none-match": first.headers["etag"]},
                ):
                    assert_edge_ready(http.get(f"/{name}{suffix}", headers=headers), keys)
                assert_edge_ready(http.head(f"/{name}{suffix}"), keys)
            if name not in (STATUS, "covid-stats"):
                state = document_of(name)[2]
                # A state's document: its name and state; a list: its name only.
                assert keys == ((name,) if state is None else (name, state_key(state)))


def test_answers_are_keyed_by_the_documents_they_are_drawn_from(api: str) -> None:
    cases: dict[str, tuple[str, ...]] = {
        "/v1/states/daily.json?states=ca,ny&lastdays=30": query_keys(
            STATES_DAILY, "json", ("CA", "NY")
        ),
        "/v1/states/daily.csv?states=tx&fields=date,positive": query_keys(
            STATES_DAILY, "csv", ("TX",)
        ),
        "/v1/states/daily.json?lastdays=2": document_keys(STATES_DAILY.document("json")),
        "/v1/us/daily.json?lastdays=30": document_keys(US_DAILY.document("json")),
        "/v1/states/ca/daily.json?lastdays=3": query_keys(STATES_DAILY, "json", ("CA",)),
        "/v1/states/ca/current.json?fields=state,positive": query_keys(
            BY_KEY["states/current"], "json", ("CA",)
        ),
        "/v1/us/derived.json": document_keys(US_DAILY.document("json")),
        "/v1/us/derived.csv?lastdays=7": document_keys(US_DAILY.document("json")),
        "/v1/states/tx/derived.json?lastdays=7": document_keys(
            STATES_DAILY.state_document("TX", "json")
        ),
        "/v1/us/revisions.json": query_keys(US_DAILY, "json"),
        "/v1/states/ny/revisions.csv": query_keys(STATES_DAILY, "csv", ("NY",)),
        "/v1/changes.json?since=2000-01-01T00:00:00Z": (CHANGES_KEY,),
    }
    with httpx.Client(base_url=api, timeout=30) as http:
        for path, keys in cases.items():
            answer = http.get(path)
            assert_edge_ready(answer, keys)
            again = http.get(path, headers={"if-none-match": answer.headers["etag"]})
            assert again.status_code == 304, path
            assert_edge_ready(again, keys)
            assert_edge_ready(http.head(path), keys)
    # Narrowed to states, an answer is not filed under the list (which every state changes).
    narrowed = cases["/v1/states/daily.json?states=ca,ny&lastdays=30"]
    assert STATES_DAILY.document("json") not in narrowed
    assert {state_key("CA"), state_key("NY")} <= set(narrowed)


def test_an_answer_as_of_an_instant_is_filed_under_as_of_alone(api: str) -> None:
    answers: list[httpx.Response] = []

    def answered() -> bool:
        # Now, in whole seconds: the first such instant after the publish answers.
        instant = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        answers.append(httpx.get(f"{api}/v1/states/daily.json?states=ca&as_of={instant}"))
        return answers[-1].status_code == 200

    wait_until(answered, timeout=10, what="an answer as of now")
    assert_edge_ready(answers[-1], (AS_OF,))
    everything = [r.document(fmt) for r in RESOURCES for fmt in FORMATS] + [STATUS]
    assert AS_OF not in purge_keys(describe(everything))  # no publish purges it


def test_errors_carry_no_surrogate_key(api: str) -> None:
    for path, status in (
        ("/v1/states/zz/daily.json", 404),
        ("/v1/states/daily.json?lastdays=x", 422),
        ("/v1/nothing.json", 404),
    ):
        answer = httpx.get(f"{api}{path}", timeout=30)
        assert answer.status_code == status, path
        assert answer.headers["cache-control"] == error_cache_control(status).decode()
        assert SURROGATE_KEY_HEADER not in answer.headers
        assert SURROGATE_CONTROL_HEADER not in answer.headers


def _states_in(answer: httpx.Response) -> set[str]:
    """The states whose records an answer holds (JSON or CSV), read from its body."""
    if answer.headers["content-type"].startswith("text/csv"):
        rows = list(csv.DictReader(io.StringIO(answer.text)))
    else:
        body = json.loads(answer.content)
        rows = body if isinstance(body, list) else [body]
    return {row["state"] for row in rows if row.get("state")}


def test_one_states_purge_reaches_exactly_the_answers_holding_it(api: str) -> None:
    """The keys a publish purges when only Texas changed (its documents, and the lists of
    the resources that hold it, as ``changed_documents`` would name them) meet the
    Surrogate-Key of every answer whose body holds Texas's records, and of no other."""
    with httpx.Client(base_url=api, timeout=30) as http:
        names = published_names(api)
        changed = [
            *(r.document(fmt) for r in RESOURCES if r.by_state for fmt in FORMATS),
            *(r.state_document("TX", fmt) for r in RESOURCES if r.per_state for fmt in FORMATS),
        ]
        purged = set(purge_keys(describe(changed)))
        paths = [
            *(f"/{n}" for n in names if n != STATUS),
            "/v1/states/tx/daily.json",
            "/v1/states/daily.json?states=ca,ny&lastdays=30",
            "/v1/states/daily.json?states=ca,tx&lastdays=30",
            "/v1/states/daily.csv?lastdays=2",
            "/v1/states/current.json?states=ny",
            "/v1/states/tx/derived.json",
            "/v1/states/ca/derived.json",
            "/v1/us/derived.json",
            "/v1/us/daily.json?lastdays=5",
            "/covid-stats",
        ]
        seen_both = set()
        for path in paths:
            answer = http.get(path)
            assert answer.status_code == 200, path
            holds_texas = "TX" in _states_in(answer) or "/tx/" in path
            assert bool(keys_of(answer) & purged) == holds_texas, path
            seen_both.add(holds_texas)
        assert seen_both == {True, False}
