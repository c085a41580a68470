"""Which resource a document's name names (``records.document_of``, what renders a document
from PostgreSQL), derived from the resources: every name the fetcher publishes resolves to
the resource, format and state it was made from; nothing else does."""

from __future__ import annotations

import re

import pytest

from covid_stats_contract import records
from covid_stats_contract.documents import (
    STATE_CODE_RE,
    STATE_PLACEHOLDER,
    STATUS,
    check_state_code,
    document_families,
)
from covid_stats_contract.models import StateRecord
from covid_stats_contract.resources import (
    FORMATS,
    RESOURCES,
    Format,
    Resource,
    state_code_pattern,
)


def test_every_published_name_resolves_to_what_it_was_made_from() -> None:
    made: dict[str, tuple[Resource, Format, str | None]] = {}
    for resource in RESOURCES:
        for fmt in FORMATS:
            made[resource.document(fmt)] = (resource, fmt, None)
            if resource.per_state is not None:
                for state in ("CA", "NY", "PR"):
                    made[resource.state_document(state, fmt)] = (resource, fmt, state)
    families = {name.replace(STATE_PLACEHOLDER, "ca") for name in document_families()}
    assert families - {STATUS} <= set(made)
    for name, expected in made.items():
        assert records.document_of(name) == expected, name


@pytest.mark.parametrize(
    "name",
    [
        STATUS,  # not a resource's: load_document answers it from the upstream states
        "v1/states/CA/daily.json",  # names carry the code in lower case
        "v1/states/c/daily.json",
        "v1/states/cal/daily.json",
        "v1/states/c1/current.json",
        f"v1/states/{STATE_PLACEHOLDER}/daily.json",
        "v1/states/ca/derived.json",  # served, never published
        "v1/states/ca/20200401.json",
        "v1/us/current.json\n",
        "v1/us/current.xml",
        "v1/us/nope.json",
        "v1/states/ca/daily.json/x",
        "/v1/us/current.json",
        "",
    ],
)
def test_a_name_no_resource_publishes_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown document"):
        records.document_of(name)


def test_the_state_code_pattern_is_two_letters_in_each_case() -> None:
    """The one definition, as each user reads it (records, document names, requests)."""
    cases = {"any": {"ca", "CA", "Ca"}, "upper": {"CA"}, "lower": {"ca"}}
    everything = {"ca", "CA", "Ca", "c", "cal", "c1", "é1", "", "ca\n"}
    for case, valid in cases.items():
        pattern = re.compile(state_code_pattern(case), re.ASCII)  # type: ignore[arg-type]
        assert {code for code in everything if pattern.fullmatch(code)} == valid, case
    assert (
        StateRecord.model_fields["state"].metadata[0].pattern == f"^{state_code_pattern('upper')}$"
    )
    assert STATE_CODE_RE.pattern == f"^{state_code_pattern()}$"
    assert check_state_code("cA") == "CA"
