"""The surrogate keys (``covid_stats_contract.edge``): one per document and state, what a
publish purges, and purge header values of a bounded size."""

from __future__ import annotations

import pytest

from covid_stats_contract.changes import describe
from covid_stats_contract.documents import STATE_PLACEHOLDER, STATUS, document_families
from covid_stats_contract.edge import (
    CHANGES_KEY,
    PURGE_HEADER_MAX_BYTES,
    document_keys,
    purge_batches,
    purge_keys,
    query_keys,
    state_key,
)
from covid_stats_contract.resources import STATES_DAILY, STATES_INFO, US_DAILY

STATES = ("al", "ca", "ny", "tx", "wy")


def every_document() -> list[str]:
    """A snapshot's documents with five states."""
    names = []
    for family in document_families():
        if STATE_PLACEHOLDER in family:
            names += [family.replace(STATE_PLACEHOLDER, state) for state in STATES]
        else:
            names.append(family)
    return names


def test_every_document_is_keyed_by_its_name_and_a_states_also_by_its_state() -> None:
    for name in every_document():
        keys = document_keys(name)
        assert keys[0] == name
        state = name.split("/")[2] if name.count("/") == 3 else None
        assert keys[1:] == ((state_key(state),) if state else ()), name
        assert all(" " not in key and "," not in key for key in keys)  # header tokens
    assert document_keys(STATUS) == (STATUS,)
    with pytest.raises(ValueError, match="unknown document"):
        document_keys("v1/nothing.json")


def test_state_keys_are_upper_case_and_refuse_what_is_no_code() -> None:
    assert state_key("ca") == state_key("CA") == "state:CA"
    for bad in ("", "c", "cal", "c1", "c a"):
        with pytest.raises(ValueError, match="invalid state code"):
            state_key(bad)


def test_a_question_is_keyed_by_the_documents_it_is_drawn_from() -> None:
    assert query_keys(US_DAILY, "csv") == ("v1/us/daily.csv",)
    assert query_keys(STATES_DAILY, "json") == ("v1/states/daily.json",)
    assert query_keys(STATES_DAILY, "json", ("NY", "ca", "CA")) == (
        *document_keys("v1/states/ca/daily.json"),
        *document_keys("v1/states/ny/daily.json"),
    )
    assert query_keys(STATES_INFO, "csv", ("tx",)) == document_keys("v1/states/tx/info.csv")


def test_a_publish_purges_its_documents_its_states_and_the_feed() -> None:
    changed = ["v1/states/tx/daily.json", "v1/states/tx/daily.csv", "v1/states/daily.json"]
    assert purge_keys(describe(changed)) == (*sorted(changed), state_key("TX"), CHANGES_KEY)
    assert purge_keys(describe([])) == ()


def test_purge_batches_are_bounded_and_carry_every_key_once_in_order() -> None:
    everything = every_document() + [f"v1/states/{c}{d}/daily.json" for c in "ab" for d in "ab"]
    keys = list(purge_keys(describe(everything)))
    assert len(" ".join(keys).encode()) > PURGE_HEADER_MAX_BYTES // 4
    for limit in (PURGE_HEADER_MAX_BYTES, 200, 64):
        batches = purge_batches(keys + keys[:3], limit)
        assert [key for batch in batches for key in batch.split(" ")] == keys
        assert all(len(batch.encode()) <= limit for batch in batches)
        if limit < len(" ".join(keys)):
            assert len(batches) > 1
    assert purge_batches(["x" * 100, "y"], 10) == ["x" * 100, "y"]  # a long key alone
    assert purge_batches([]) == []
