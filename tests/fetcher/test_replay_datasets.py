"""The replay upstream's behaviour on any dataset (the archive and the synthetic one: per-state
and per-date paths, CSV variants, 404s, conditional requests, HEAD) and the synthetic dataset
itself (deterministic, 56 jurisdictions, the archive's schema, consistent sums)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from email.utils import formatdate, parsedate_to_datetime
from itertools import pairwise
from pathlib import Path

import pytest

from replay_support import (
    ARCHIVE,
    Record,
    Server,
    archive,
    archive_json,
    assert_csv_matches,
    compact_array,
    needs_archive,
    records_of,
    run_server,
    serve_folder,
    serve_synthetic,
)
from replay_upstream.dataset import FILE_PATHS
from replay_upstream.synthetic import (
    CUMULATIVE_FIELDS,
    INCREASES,
    JURISDICTIONS,
    US_SUMMED,
    synthetic_files,
    write_synthetic_dataset,
)

pytestmark = pytest.mark.unit  # `make test-fast`


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_folder(ARCHIVE, tmp_path_factory)


@pytest.fixture(scope="module")
def synthetic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_synthetic(tmp_path_factory)


@pytest.fixture(scope="module")
def synthetic() -> dict[str, bytes]:
    """The default synthetic dataset's files, generated in this process."""
    return synthetic_files()


# --- behaviour common to any dataset (archive and synthetic) ------------------------------


@pytest.fixture(
    params=[pytest.param("archive", marks=[archive, needs_archive]), "synthetic"],
)
def server(request: pytest.FixtureRequest) -> Server:
    """The archive server, then the synthetic one: the tests below run against both."""
    found: Server = request.getfixturevalue(f"{request.param}_server")
    return found


def test_per_state_paths_agree_with_the_lists(server: Server) -> None:
    current = server.json("/v1/states/current.json")
    info = {r["state"]: r for r in server.json("/v1/states/info.json")}
    daily = server.json("/v1/states/daily.json")
    assert len(current) == len(info) == 56
    for record in current:
        code = record["state"].lower()
        assert server.json(f"/v1/states/{code}/current.json") == record
        assert server.json(f"/v1/states/{code}/info.json") == info[record["state"]]
        history = server.json(f"/v1/states/{code}/daily.json")
        assert history == [r for r in daily if r["state"] == record["state"]]
        assert [r["date"] for r in history] == sorted((r["date"] for r in history), reverse=True)
    ca_day = next(r for r in daily if r["state"] == "CA" and r["date"] == 20200401)
    response = server.get("/v1/states/ca/20200401.json")
    assert response.json() == ca_day
    assert response.content == json.dumps(ca_day, separators=(",", ":")).encode() + b"\n"


def test_per_date_us_paths_agree_with_us_daily(server: Server) -> None:
    us_daily = server.json("/v1/us/daily.json")
    for record in us_daily[::20]:
        response = server.get(f"/v1/us/{record['date']}.json")
        assert response.json() == record
        assert response.content == json.dumps(record, separators=(",", ":")).encode() + b"\n"
    assert server.json("/v1/us/20200901.json") == server.json("/v1/us/current.json")[0]


def test_csv_variants_of_derived_paths(server: Server) -> None:
    for path in ["/v1/states/ny/daily", "/v1/states/ny/current", "/v1/us/20200401"]:
        as_json = server.json(f"{path}.json")
        records = as_json if isinstance(as_json, list) else [as_json]
        response = server.get(f"{path}.csv")
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert_csv_matches(response.content, records)


def test_state_codes_are_case_insensitive(server: Server) -> None:
    for code in ["CA", "Ca"]:
        for tail in ["current.json", "daily.csv", "info.json", "20200401.json"]:
            other = server.get(f"/v1/states/{code}/{tail}")
            assert other.status_code == 200
            assert other.content == server.get(f"/v1/states/ca/{tail}").content
    assert server.json("/v1/states/CA/current.json")["state"] == "CA"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/states/zz/current.json",
        "/v1/states/zz/daily.json",
        "/v1/states/ca/20190101.json",
        "/v1/states/ca/20200230.json",
        "/v1/us/20190101.json",
        "/v1/us/daily.xml",
        "/v1/nothing.json",
        "/v2/us/current.json",
        "/",
    ],
)
def test_unknown_paths_get_404_json(server: Server, path: str) -> None:
    response = server.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {"error": "not found", "path": path}


def test_conditional_requests_get_304(server: Server) -> None:
    path = "/v1/states/daily.json"
    first = server.get(path)
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert len(etag) > 20
    assert int(first.headers["content-length"]) == len(first.content)
    build_time = datetime.fromisoformat(server.json("/v1/status.json")["buildTime"])
    assert parsedate_to_datetime(last_modified) == build_time.replace(microsecond=0)
    assert server.get(path).headers["etag"] == etag  # stable

    def status(headers: dict[str, str]) -> int:
        return server.get(path, headers=headers).status_code

    not_modified = server.get(path, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert not_modified.headers["access-control-allow-origin"] == "*"
    assert status({"If-None-Match": f'"other", W/{etag}'}) == 304
    assert status({"If-None-Match": "*"}) == 304
    assert status({"If-None-Match": '"other"'}) == 200
    assert status({"If-Modified-Since": last_modified}) == 304
    assert status({"If-Modified-Since": formatdate(0, usegmt=True)}) == 200
    # If-None-Match wins over If-Modified-Since.
    assert status({"If-None-Match": '"other"', "If-Modified-Since": last_modified}) == 200
    assert server.get("/v1/us/daily.json").headers["etag"] != etag


def test_head_gives_get_headers_without_body(server: Server) -> None:
    for path in ["/v1/states/daily.json", "/v1/states/ca/current.csv", "/v1/us/current.json"]:
        get = server.get(path)
        head = server.client.head(path)
        assert head.status_code == 200
        assert head.content == b""
        for name in ["content-length", "content-type", "etag", "last-modified"]:
            assert head.headers[name] == get.headers[name], name
        assert head.headers["access-control-allow-origin"] == "*"
    assert server.client.head("/v1/states/zz/current.json").status_code == 404


# --- the synthetic dataset ----------------------------------------------------------------


def test_synthetic_is_deterministic(synthetic: dict[str, bytes]) -> None:
    again = synthetic_files()
    assert again == synthetic
    assert synthetic_files(seed=7, end=date(2020, 3, 31)) == synthetic_files(
        seed=7, end=date(2020, 3, 31)
    )
    assert synthetic_files(seed=7, end=date(2020, 3, 31)) != synthetic_files(end=date(2020, 3, 31))
    kinds = ["us_current", "us_daily", "states_current", "states_daily", "states_info"]
    names = {f"{kind}.{ext}" for kind in kinds for ext in ["json", "csv"]}
    assert set(synthetic) == {*names, "status.json"}


def test_synthetic_has_the_56_jurisdictions(synthetic: dict[str, bytes]) -> None:
    info = records_of(synthetic, "states_info.json")
    assert len(info) == 56
    assert [(r["state"], r["name"], r["fips"]) for r in info] == list(JURISDICTIONS)
    for code in ["DC", "AS", "GU", "MP", "PR", "VI", "CA", "WY"]:
        assert code in {r["state"] for r in info}
    current = records_of(synthetic, "states_current.json")
    assert [r["state"] for r in current] == sorted(r["state"] for r in current)
    assert len(current) == 56
    daily = records_of(synthetic, "states_daily.json")
    assert len(daily) == 56 * 185  # 2020-03-01 .. 2020-09-01
    order = [(-r["date"], r["state"]) for r in daily]
    assert order == sorted(order)
    us = records_of(synthetic, "us_daily.json")
    assert len(us) == 185
    assert [r["date"] for r in us] == sorted((r["date"] for r in us), reverse=True)
    assert {r["states"] for r in us} == {56}
    assert records_of(synthetic, "us_current.json") == us[:1]
    assert current == [r for r in daily if r["date"] == 20200901]


def test_synthetic_schema_matches_the_archive_schema(synthetic: dict[str, bytes]) -> None:
    us = records_of(synthetic, "us_daily.json")
    states = records_of(synthetic, "states_daily.json")
    info = records_of(synthetic, "states_info.json")
    assert {len(r) for r in us} == {25}
    assert {len(r) for r in states} == {54}
    assert {len(r) for r in info} == {11}
    status = json.loads(synthetic["status.json"])
    assert list(status) == ["buildTime", "production", "runNumber"]
    for record in states:
        assert isinstance(record["date"], int)
        assert isinstance(record["fips"], str)
        assert isinstance(record["totalTestResultsSource"], str)
        assert isinstance(record["grade"], str)
        assert isinstance(record["dataQualityGrade"], str)
        assert int(record["hash"], 16) < 16**40
    if ARCHIVE.is_dir():  # key order and value types as in the archive
        pairs = [
            ("us_daily.json", us),
            ("states_current.json", states),
            ("states_info.json", info),
        ]
        for name, records in pairs:
            real = archive_json(name)
            assert list(records[0]) == list(real[0]), name
            for key in real[0]:
                real_types = {type(r[key]) for r in real} - {type(None)}
                ours = {type(r[key]) for r in records} - {type(None)}
                assert ours <= real_types or not real_types, (name, key, ours, real_types)
        assert list(status) == list(json.loads((ARCHIVE / "status.json").read_bytes()))


def test_synthetic_us_is_the_sum_of_the_states(synthetic: dict[str, bytes]) -> None:
    by_date: dict[int, list[Record]] = {}
    for record in records_of(synthetic, "states_daily.json"):
        by_date.setdefault(record["date"], []).append(record)
    for us in records_of(synthetic, "us_daily.json"):
        states = by_date[us["date"]]
        assert us["states"] == len(states) == 56
        for field in US_SUMMED:
            values = [s[field] for s in states if s[field] is not None]
            assert us[field] == (sum(values) if values else None), (us["date"], field)


def test_synthetic_increases_are_daily_differences(synthetic: dict[str, bytes]) -> None:
    def check(history: list[Record]) -> None:  # oldest first
        for field in INCREASES:
            assert history[0][field] == 0
        for before, after in pairwise(history):
            for increase, base in INCREASES.items():
                assert after[increase] == (after[base] or 0) - (before[base] or 0), increase
            for field in CUMULATIVE_FIELDS:
                assert (after[field] or 0) >= (before[field] or 0), field
            assert after["posNeg"] == after["positive"] + after["negative"]
            assert after["totalTestResults"] == after["posNeg"]

    states = records_of(synthetic, "states_daily.json")
    for code, _, _ in JURISDICTIONS:
        check([r for r in reversed(states) if r["state"] == code])
    check(list(reversed(records_of(synthetic, "us_daily.json"))))
    assert records_of(synthetic, "us_current.json")[0]["positive"] > 100_000


def test_synthetic_csv_and_json_agree(synthetic: dict[str, bytes]) -> None:
    for kind in ["us_current", "us_daily", "states_current", "states_daily", "states_info"]:
        assert_csv_matches(synthetic[f"{kind}.csv"], records_of(synthetic, f"{kind}.json"))
        records = records_of(synthetic, f"{kind}.json")
        assert synthetic[f"{kind}.json"] == compact_array(records)


def test_synthetic_server_serves_the_synthetic_files(
    synthetic_server: Server, synthetic: dict[str, bytes]
) -> None:
    for name, data in synthetic.items():
        assert synthetic_server.get(FILE_PATHS[name]).content == data, name
    daily = records_of(synthetic, "states_daily.json")
    wy = synthetic_server.json("/v1/states/WY/daily.json")
    assert wy == [r for r in daily if r["state"] == "WY"]
    assert synthetic_server.json("/v1/states/pr/20200704.json") == next(
        r for r in daily if r["state"] == "PR" and r["date"] == 20200704
    )
    us = records_of(synthetic, "us_daily.json")
    assert synthetic_server.json("/v1/us/20200704.json") == next(
        r for r in us if r["date"] == 20200704
    )
    response = synthetic_server.get("/v1/states/zz/daily.json")
    assert response.status_code == 404
    current = synthetic_server.get("/v1/us/current.json")
    assert current.headers["last-modified"] == "Wed, 02 Sep 2020 04:00:00 GMT"
    assert "synthetic" in synthetic_server.stderr.read_text()


def test_write_synthetic_then_serve_it_from_the_environment(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    options = ["--start", "2020-06-01", "--end", "2020-06-30", "--seed", "5"]
    subprocess.run(
        [sys.executable, "-m", "replay_upstream", "write-synthetic", str(target), *options],
        check=True,
        capture_output=True,
        timeout=60,
    )
    expected = synthetic_files(start=date(2020, 6, 1), end=date(2020, 6, 30), seed=5)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == expected
    with run_server([], tmp_path, env={"REPLAY_DATASET_DIR": str(target)}) as server:
        assert str(target.resolve()) in server.stderr.read_text()
        for name, data in expected.items():
            assert server.get(FILE_PATHS[name]).content == data, name
        assert len(server.json("/v1/states/ca/daily.json")) == 30


def test_unknown_paths_get_404_whatever_the_method(synthetic_server: Server) -> None:
    for method in ["POST", "PUT", "DELETE"]:
        unknown = synthetic_server.client.request(method, "/v1/nothing.json")
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "not found", "path": "/v1/nothing.json"}
        known = synthetic_server.client.request(method, "/v1/us/current.json")
        assert known.status_code == 405
        assert known.headers["allow"] == "GET, HEAD, OPTIONS"


# --- --last-days: the newest days of a dataset (the tests' `recent` upstream) --------------


def test_last_days_serves_the_newest_dates_and_the_other_files_unchanged(
    synthetic_server: Server, tmp_path: Path
) -> None:
    with run_server(["--synthetic", "--last-days", "3"], tmp_path) as cut:
        whole = synthetic_server.json("/v1/states/daily.json")
        newest = sorted({record["date"] for record in whole}, reverse=True)[:3]
        assert cut.json("/v1/states/daily.json") == [r for r in whole if r["date"] in newest]
        assert_csv_matches(
            cut.get("/v1/states/daily.csv").content, cut.json("/v1/states/daily.json")
        )
        ny = synthetic_server.json("/v1/states/ny/daily.json")
        assert cut.json("/v1/states/ny/daily.json") == [r for r in ny if r["date"] in newest]
        us = synthetic_server.json("/v1/us/daily.json")
        assert cut.json("/v1/us/daily.json") == [r for r in us if r["date"] in newest]
        older = max(r["date"] for r in us if r["date"] not in newest)
        assert cut.get(f"/v1/us/{min(newest)}.json").status_code == 200
        assert cut.get(f"/v1/us/{older}.json").status_code == 404
        assert cut.get(f"/v1/states/ca/{older}.json").status_code == 404
        for path in ("/v1/us/current.json", "/v1/states/current.csv", "/v1/states/info.json"):
            assert cut.get(path).content == synthetic_server.get(path).content, path


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--synthetic", "--last-days", "0"], {}, "at least 1"),
        (["--synthetic"], {"REPLAY_LAST_DAYS": "two"}, "invalid int value: 'two'"),
        (["--editions", "FOLDER", "--last-days", "3"], {}, "not editions"),
    ],
)
def test_last_days_refuses_editions_and_less_than_a_day(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    if "FOLDER" in args:
        write_synthetic_dataset(tmp_path, start=date(2020, 3, 1), end=date(2020, 3, 3))
    args = [str(tmp_path) if arg == "FOLDER" else arg for arg in args]
    result = subprocess.run(
        [sys.executable, "-m", "replay_upstream", *args],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr.decode()
