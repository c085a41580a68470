"""What a query answer's rendering holds (``reads.queries.render``), measured with tracemalloc.

Issue 23 item 1: a worker's memory grew for good under distinct projection and CSV
questions, because each computation parsed all its records at once (about 4.6 times their
text in Python objects: 59 MiB for the 12.9 MiB of the archive's states daily records) and
Python's allocator keeps an arena while any object in it lives. Rendering parses one record at
a time; these tests bound the Python heap a rendering takes beyond its input and check the
bytes are the ones the whole-records rendering made (and the api served before).

The peak is a measurement of allocated bytes, not a timing: the bound (the records' text
size) is generous, four to forty times what the rendering takes now and a fifth of what it
took before."""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

import pytest

from covid_stats_api.reads.queries import Query, UnknownField, render
from covid_stats_contract.documents import encode_record, render_array, render_csv, render_object
from covid_stats_contract.models import model_of
from covid_stats_contract.resources import STATES_DAILY, Resource

pytestmark = pytest.mark.unit

MODELLED = list(model_of(STATES_DAILY).model_fields)


def _records(count: int) -> list[str]:
    """``count`` record texts shaped like the states' daily records: every modelled field
    (numbers, nulls, strings, booleans), some records without some fields and a few with a
    field the model lacks, so that a CSV header's first-seen order matters."""
    rng = random.Random(23)
    texts = []
    for i in range(count):
        record: dict[str, Any] = {}
        for name in MODELLED:
            if name in ("date",):
                record[name] = 20200301 + i % 200
            elif name == "state":
                record[name] = "CA"
            elif rng.random() < 0.1:
                continue  # a field this record lacks
            else:
                record[name] = rng.choice([None, rng.randint(0, 10**7), rng.random(), "x", True])
        if i % 997 == 500:
            record["newField"] = i
        texts.append(json.dumps(record, separators=(",", ":")))
    return texts


def _whole(query: Query, texts: list[str]) -> bytes:
    """The rendering that parses every record first (the api's before this change)."""
    records: list[dict[str, Any]] = [json.loads(t) for t in texts]
    if query.fields:
        wanted = set(query.fields)
        records = [{k: v for k, v in r.items() if k in wanted} for r in records]
    if query.fmt == "csv":
        return render_csv(records)
    if query.single:
        return render_object(encode_record(records[0]))
    return render_array(encode_record(r) for r in records)


def _peak(query: Query, texts: list[str]) -> tuple[bytes, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        body = render(query, texts)
        return body, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


TEXTS = _records(10_000)
SIZE = sum(len(t) for t in TEXTS)


@pytest.mark.parametrize(
    ("fmt", "fields"),
    [
        ("json", ("date", "state", "positive", "death")),
        ("json", ("death", "newField", "date")),
        ("csv", ()),
        ("csv", ("date", "positive", "newField")),
    ],
)
def test_projection_and_csv_hold_less_than_their_records(fmt: Any, fields: tuple[str, ...]) -> None:
    query = Query(STATES_DAILY, fmt, fields=fields)
    body, peak = _peak(query, TEXTS)
    assert body == _whole(query, TEXTS)
    # Before: 4.6x SIZE (all records parsed at once); now 0.1x to 0.4x.
    assert peak < SIZE, f"{peak / 2**20:.1f} MiB for {SIZE / 2**20:.1f} MiB of records"


@pytest.mark.parametrize(
    ("fmt", "fields", "single"),
    [
        ("json", ("positive",), True),
        ("csv", ("positive",), True),
        ("json", (), True),
        ("csv", ("newField",), False),
        ("json", ("state", "date"), False),
    ],
)
def test_bytes_are_the_whole_records_rendering(
    fmt: Any, fields: tuple[str, ...], single: bool
) -> None:
    texts = TEXTS[:1] if single else TEXTS[:3000]
    query = Query(STATES_DAILY, fmt, fields=fields, single=single)
    assert render(query, texts) == _whole(query, texts)


def test_empty_and_unknown_fields() -> None:
    resource: Resource = STATES_DAILY
    for fmt in ("json", "csv"):
        assert render(Query(resource, fmt), []) == _whole(Query(resource, fmt), [])
    with pytest.raises(UnknownField) as caught:
        render(Query(resource, "csv", fields=("date", "nope")), TEXTS[:10])
    assert caught.value.parameter == "fields"
    with pytest.raises(UnknownField) as caught:
        render(Query(resource, "json", sort=(("nope", False),)), TEXTS[:10])
    assert caught.value.parameter == "sort"
