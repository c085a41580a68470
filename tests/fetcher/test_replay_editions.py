"""The replay upstream's editions (``--editions``): datasets served one after the other,
moved by ``/_control/edition``, over real HTTP. Synthetic editions written to folders here
(the real ones: tests/fetcher/test_revisions.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from replay_support import Server, run_server
from replay_upstream.fields import STATE_TYPES
from replay_upstream.formats import parse_csv
from replay_upstream.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.unit  # `make test-fast`

EDITION = "/_control/edition"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Edition 1: every file of a synthetic dataset; edition 2: only the states daily CSV of
    another (a longer history, other values)."""
    first = tmp_path_factory.mktemp("edition1")
    write_synthetic_dataset(first, start=date(2020, 8, 1), end=date(2020, 8, 20), seed=1)
    scratch = tmp_path_factory.mktemp("scratch")
    write_synthetic_dataset(scratch, start=date(2020, 8, 1), end=date(2020, 8, 31), seed=2)
    second = tmp_path_factory.mktemp("edition2")
    (second / "states_daily.csv").write_bytes((scratch / "states_daily.csv").read_bytes())
    return [first, second]


@pytest.fixture(scope="module")
def server(folders: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--editions", *map(str, folders)]  # no --control: the editions' path is served
    with run_server(args, tmp_path_factory.mktemp("editions")) as running:
        yield running


def test_editions_are_served_in_turn(server: Server, folders: list[Path]) -> None:
    assert server.client.put(EDITION, json={"edition": 1}).status_code == 200
    state = server.json(EDITION)
    assert (state["edition"], state["editions"]) == (1, 2)
    assert state["folders"] == [str(folder.resolve()) for folder in folders]
    first_daily = server.get("/v1/states/daily.csv")
    first_us = server.get("/v1/us/daily.json")
    assert first_daily.content == (folders[0] / "states_daily.csv").read_bytes()

    moved = server.client.post(EDITION)
    assert moved.status_code == 200
    assert moved.json()["edition"] == 2
    second_daily = server.get("/v1/states/daily.csv")
    assert second_daily.content == (folders[1] / "states_daily.csv").read_bytes()
    assert second_daily.headers["etag"] != first_daily.headers["etag"]
    assert second_daily.headers["last-modified"] != first_daily.headers["last-modified"]
    # A conditional request with the first edition's tag gets the new bytes.
    fresh = server.get(
        "/v1/states/daily.csv", headers={"If-None-Match": first_daily.headers["etag"]}
    )
    assert fresh.status_code == 200
    # The kinds edition 2 lacks are edition 1's, byte for byte.
    assert server.get("/v1/us/daily.json").content == first_us.content
    # The per-state paths follow the new records.
    assert server.get("/v1/states/ca/20200831.json").status_code == 200

    last = server.client.post(EDITION)
    refused(last, 409)
    back = server.client.put(EDITION, json={"edition": 1})
    assert back.json()["edition"] == 1
    assert server.get("/v1/states/daily.csv").content == first_daily.content
    assert server.get("/v1/states/ca/20200831.json").status_code == 404


@pytest.mark.parametrize(
    "body",
    ['{"edition": 0}', '{"edition": 3}', '{"edition": "2"}', '{"edition": true}', "{}", "[1]", "x"],
)
def test_a_bad_edition_is_refused(server: Server, body: str) -> None:
    before = server.json(EDITION)["edition"]
    response = server.client.put(EDITION, content=body)
    refused(response, 400)
    assert server.json(EDITION)["edition"] == before


def test_other_methods_and_no_editions(server: Server, tmp_path: Path) -> None:
    assert server.client.delete(EDITION).status_code == 405
    assert server.get("/_control/faults").status_code == 404  # no --control
    with run_server(["--synthetic", "--end", "2020-03-10"], tmp_path) as single:
        assert single.get(EDITION).status_code == 404


def refused(response: httpx.Response, status: int) -> None:
    """The replay upstream's own error shape (like the upstream's): {"error": ..., "path": ...}."""
    assert response.status_code == status, response.text
    value = response.json()
    assert set(value) == {"error", "path"}, value
    assert value["path"] == EDITION


def test_a_repeated_csv_column_is_read_from_its_first_occurrence() -> None:
    data = b"date,state,positive,date\n20201205,MI,14,20201206\n"
    assert parse_csv(data, STATE_TYPES) == [{"date": 20201205, "state": "MI", "positive": 14}]
    with pytest.raises(ValueError, match="cells"):
        parse_csv(b"date,state\n20201205\n", STATE_TYPES)
