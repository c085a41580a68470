"""Tests of the replay upstream (tools/replay-upstream), over real HTTP against the real server.

Each server is ``python -m replay_upstream`` in a subprocess on a free port. Tests marked
``archive`` use the archived CTP data at ``<repo root>/../shared/covidtracking`` (the 2020 API
snapshot, the 2021 v1 CSV backup, the website's final states history) and are skipped, saying
so, where it is absent; the synthetic and control-API tests run everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import formatdate, parsedate_to_datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.procs import free_port, wait_until
from replay_upstream.dataset import FILE_PATHS, V1_LAYOUT, WEBSITE_LAYOUT, load_dataset
from replay_upstream.synthetic import (
    CUMULATIVE_FIELDS,
    INCREASES,
    JURISDICTIONS,
    US_SUMMED,
    synthetic_files,
)
from support import REPO

SHARED = REPO.parent / "shared" / "covidtracking"
ARCHIVE = SHARED / "ctp_v1_api_snapshot_20200902"
CSV_2021 = SHARED / "ctp_v1_csv_20210306"
WEBSITE = SHARED / "ctp_website_final_20210307"
STATES_DAILY_2021 = "states_daily_4pm_et__as_of_20201206.csv"
archive = pytest.mark.archive


def _needs(folder: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not folder.is_dir(),
        reason=f"archived CTP data absent: no {folder} (../shared/covidtracking from repo root)",
    )


needs_archive = _needs(ARCHIVE)
needs_csv_2021 = _needs(CSV_2021)
needs_website = _needs(WEBSITE)
READY_TIMEOUT = 30.0

Record = dict[str, Any]


@dataclass
class Server:
    """A running replay upstream and a client bound to it."""

    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client
    stderr: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, (path, response.text)
        return response.json()


@contextmanager
def run_server(
    args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start ``python -m replay_upstream ARGS`` and wait (with a deadline) until it answers."""
    port = free_port()
    stderr = log_dir / f"replay-upstream-{port}.err"
    command = [sys.executable, "-m", "replay_upstream", "--port", str(port), *args]
    environment = {k: v for k, v in os.environ.items() if k != "REPLAY_DATASET_DIR"}
    environment.update(env or {})
    with stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=environment)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=10.0)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"replay upstream exited early: {stderr.read_text()}")
        try:
            client.get("/v1/status.json", timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    try:
        try:
            wait_until(answers, READY_TIMEOUT, what="the replay upstream")
        except TimeoutError:
            pytest.fail(f"replay upstream not ready in {READY_TIMEOUT}s: {stderr.read_text()}")
        yield Server(url=url, process=process, client=client, stderr=stderr)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not ARCHIVE.is_dir():
        pytest.skip(f"archived CTP data absent: no {ARCHIVE}")
    with run_server(["--dataset", str(ARCHIVE)], tmp_path_factory.mktemp("archive")) as server:
        yield server


@pytest.fixture(scope="module")
def csv2021_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CSV_2021.is_dir():
        pytest.skip(f"archived CTP data absent: no {CSV_2021}")
    with run_server(["--dataset", str(CSV_2021)], tmp_path_factory.mktemp("csv2021")) as server:
        yield server


@pytest.fixture(scope="module")
def website_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not WEBSITE.is_dir():
        pytest.skip(f"archived CTP data absent: no {WEBSITE}")
    with run_server(["--dataset", str(WEBSITE)], tmp_path_factory.mktemp("website")) as server:
        yield server


@pytest.fixture(scope="module")
def synthetic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(["--synthetic"], tmp_path_factory.mktemp("synthetic")) as server:
        yield server


@pytest.fixture(scope="module")
def synthetic() -> dict[str, bytes]:
    """The default synthetic dataset's files, generated in this process."""
    return synthetic_files()


def _archive_json(name: str) -> list[Record]:
    records: list[Record] = json.loads((ARCHIVE / name).read_bytes())
    return records


def _compact_array(records: Sequence[Record]) -> bytes:
    text = ",".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records)
    return f"[{text}]\n".encode()


def _csv_text(value: Any) -> str:
    """How upstream CSV writes a JSON value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def _assert_csv_matches(data: bytes, records: Sequence[Record]) -> None:
    rows = _csv_rows(data)
    assert rows[0] == list(records[0])
    assert rows[1:] == [[_csv_text(v) for v in record.values()] for record in records]


# --- the archive, served ------------------------------------------------------------------


@archive
@needs_archive
def test_archive_files_are_served_byte_for_byte(archive_server: Server) -> None:
    served = 0
    for name, path in FILE_PATHS.items():
        if not (ARCHIVE / name).is_file():
            continue
        response = archive_server.get(path)
        assert response.status_code == 200, path
        assert response.content == (ARCHIVE / name).read_bytes(), path
        expected_type = "application/json" if name.endswith(".json") else "text/csv; charset=utf-8"
        assert response.headers["content-type"] == expected_type
        assert response.headers["access-control-allow-origin"] == "*"
        served += 1
    assert served == 10
    for path, name in [
        ("/v1/us/current.json", "us_current.json"),
        ("/v1/states/current.json", "states_current.json"),
    ]:
        assert archive_server.get(path).content == (ARCHIVE / name).read_bytes()


@archive
@needs_archive
def test_states_daily_json_is_derived_from_the_csv(archive_server: Server) -> None:
    response = archive_server.get("/v1/states/daily.json")
    assert response.status_code == 200
    records: list[Record] = response.json()
    assert len(records) == 10_178
    assert response.content == _compact_array(records)
    csv_bytes = (ARCHIVE / "states_daily.csv").read_bytes()
    header = _csv_rows(csv_bytes)[0]
    assert all(list(record) == header for record in records)
    # Lossless: written back as CSV cells, the records give the archived rows again.
    _assert_csv_matches(csv_bytes, records)
    order = [(-record["date"], record["state"]) for record in records]
    assert order == sorted(order)
    assert len({record["state"] for record in records}) == 56
    first = records[0]
    assert isinstance(first["date"], int)
    assert isinstance(first["positive"], int)
    assert first["fips"] == "02"
    assert first["grade"] == ""
    assert isinstance(first["totalTestResultsSource"], str)
    early = [r for r in records if r["date"] < 20200315]
    assert any(r["dataQualityGrade"] == "" for r in early)
    assert any(r["dateModified"] is None for r in early)


@archive
@needs_archive
def test_states_daily_latest_day_equals_states_current(archive_server: Server) -> None:
    # Measured on the 2020-09-02 snapshot: all 54 fields of all 56 jurisdictions agree.
    daily = [r for r in archive_server.json("/v1/states/daily.json") if r["date"] == 20200901]
    assert daily == _archive_json("states_current.json")


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
        _assert_csv_matches(response.content, records)


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


def _records(files: Mapping[str, bytes], name: str) -> list[Record]:
    records: list[Record] = json.loads(files[name])
    return records


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
    info = _records(synthetic, "states_info.json")
    assert len(info) == 56
    assert [(r["state"], r["name"], r["fips"]) for r in info] == list(JURISDICTIONS)
    for code in ["DC", "AS", "GU", "MP", "PR", "VI", "CA", "WY"]:
        assert code in {r["state"] for r in info}
    current = _records(synthetic, "states_current.json")
    assert [r["state"] for r in current] == sorted(r["state"] for r in current)
    assert len(current) == 56
    daily = _records(synthetic, "states_daily.json")
    assert len(daily) == 56 * 185  # 2020-03-01 .. 2020-09-01
    order = [(-r["date"], r["state"]) for r in daily]
    assert order == sorted(order)
    us = _records(synthetic, "us_daily.json")
    assert len(us) == 185
    assert [r["date"] for r in us] == sorted((r["date"] for r in us), reverse=True)
    assert {r["states"] for r in us} == {56}
    assert _records(synthetic, "us_current.json") == us[:1]
    assert current == [r for r in daily if r["date"] == 20200901]


def test_synthetic_schema_matches_the_archive_schema(synthetic: dict[str, bytes]) -> None:
    us = _records(synthetic, "us_daily.json")
    states = _records(synthetic, "states_daily.json")
    info = _records(synthetic, "states_info.json")
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
            real = _archive_json(name)
            assert list(records[0]) == list(real[0]), name
            for key in real[0]:
                real_types = {type(r[key]) for r in real} - {type(None)}
                ours = {type(r[key]) for r in records} - {type(None)}
                assert ours <= real_types or not real_types, (name, key, ours, real_types)
        assert list(status) == list(json.loads((ARCHIVE / "status.json").read_bytes()))


def test_synthetic_us_is_the_sum_of_the_states(synthetic: dict[str, bytes]) -> None:
    by_date: dict[int, list[Record]] = {}
    for record in _records(synthetic, "states_daily.json"):
        by_date.setdefault(record["date"], []).append(record)
    for us in _records(synthetic, "us_daily.json"):
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

    states = _records(synthetic, "states_daily.json")
    for code, _, _ in JURISDICTIONS:
        check([r for r in reversed(states) if r["state"] == code])
    check(list(reversed(_records(synthetic, "us_daily.json"))))
    assert _records(synthetic, "us_current.json")[0]["positive"] > 100_000


def test_synthetic_csv_and_json_agree(synthetic: dict[str, bytes]) -> None:
    for kind in ["us_current", "us_daily", "states_current", "states_daily", "states_info"]:
        _assert_csv_matches(synthetic[f"{kind}.csv"], _records(synthetic, f"{kind}.json"))
        records = _records(synthetic, f"{kind}.json")
        assert synthetic[f"{kind}.json"] == _compact_array(records)


def test_synthetic_server_serves_the_synthetic_files(
    synthetic_server: Server, synthetic: dict[str, bytes]
) -> None:
    for name, data in synthetic.items():
        assert synthetic_server.get(FILE_PATHS[name]).content == data, name
    daily = _records(synthetic, "states_daily.json")
    wy = synthetic_server.json("/v1/states/WY/daily.json")
    assert wy == [r for r in daily if r["state"] == "WY"]
    assert synthetic_server.json("/v1/states/pr/20200704.json") == next(
        r for r in daily if r["state"] == "PR" and r["date"] == 20200704
    )
    us = _records(synthetic, "us_daily.json")
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


# --- the 2021 folders: v1 CSV backup and the website's states history ---------------------


def test_load_dataset_recognises_the_three_folders() -> None:
    folders = [ARCHIVE, CSV_2021, WEBSITE]
    if not all(folder.is_dir() for folder in folders):
        pytest.skip(f"archived CTP data absent: no {SHARED} (or not all of its folders)")
    counts = {}
    for folder in folders:
        dataset = load_dataset(folder)
        counts[folder.name] = (dataset.layout, {k: len(v) for k, v in dataset.records.items()})

    def v1(us_daily: int, states_daily: int) -> dict[str, int]:
        return {
            "us_current": 1,
            "us_daily": us_daily,
            "states_current": 56,
            "states_daily": states_daily,
            "states_info": 56,
        }

    assert counts == {
        ARCHIVE.name: (V1_LAYOUT, v1(224, 10_178)),
        CSV_2021.name: (V1_LAYOUT, v1(419, 15_577)),
        WEBSITE.name: (WEBSITE_LAYOUT, {"states_daily": 20_780}),
    }


def test_load_dataset_folder_layouts(tmp_path: Path) -> None:
    files = synthetic_files(start=date(2020, 6, 1), end=date(2020, 6, 3))
    daily = files["states_daily.csv"]
    older = daily.split(b"\n", 1)[0] + b"\n"  # header only: no records
    folder = tmp_path / "repo-names"
    folder.mkdir()
    (folder / "states_daily_4pm_et__as_of_20200602.csv").write_bytes(older)
    (folder / "states_daily_4pm_et__as_of_20200603.csv").write_bytes(daily)
    (folder / "all-states-history.csv").write_bytes(b'"date","state"\n"bad","CA"\n')  # ignored
    dataset = load_dataset(folder)
    assert dataset.files == {"states_daily.csv": daily}
    assert len(dataset.records["states_daily"]) == 56 * 3
    (folder / "states_daily_4pm_et.csv").write_bytes(older)  # the live name wins over as-of
    (folder / "states_daily.csv").write_bytes(daily)  # and the API name over both
    assert load_dataset(folder).files == {"states_daily.csv": daily}
    (folder / "states_daily.csv").unlink()
    assert load_dataset(folder).files == {"states_daily.csv": older}

    website = tmp_path / "website"
    website.mkdir()
    (website / "all-states-history.csv").write_bytes(
        b'"date","state","positive","totalTestsViral"\n'
        b'"2020-03-01","WA",10,\n"2020-03-02","CA",5,7\n"2020-03-02","AK",,1'
    )
    converted = load_dataset(website)
    assert converted.layout == WEBSITE_LAYOUT
    assert converted.files == {}
    assert converted.records == {
        "states_daily": [
            {"date": 20200302, "state": "AK", "positive": None, "totalTestsViral": 1},
            {"date": 20200302, "state": "CA", "positive": 5, "totalTestsViral": 7},
            {"date": 20200301, "state": "WA", "positive": 10, "totalTestsViral": None},
        ]
    }
    (website / "all-states-history.csv").write_bytes(b'"date","state"\n"3/2/2020","CA"\n')
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        load_dataset(website)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no CTP v1 files"):
        load_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    ("server_name", "daily_count", "info_count"),
    [
        pytest.param("archive_server", 10_178, 56, marks=[archive, needs_archive]),
        pytest.param("csv2021_server", 15_577, 56, marks=[archive, needs_csv_2021]),
        pytest.param("website_server", 20_780, None, marks=[archive, needs_website]),
    ],
)
def test_record_counts(
    request: pytest.FixtureRequest, server_name: str, daily_count: int, info_count: int | None
) -> None:
    server: Server = request.getfixturevalue(server_name)
    daily = server.json("/v1/states/daily.json")
    assert len(daily) == daily_count
    assert len(_csv_rows(server.get("/v1/states/daily.csv").content)) == daily_count + 1
    assert len({r["state"] for r in daily}) == 56
    info = server.get("/v1/states/info.json")
    if info_count is None:
        assert info.status_code == 404
        return
    assert len(info.json()) == info_count
    info_csv = server.get("/v1/states/info.csv").content
    assert len(_csv_rows(info_csv)) == info_count + 1
    assert info_csv.count(b"\n") > info_count + 1  # notes hold quoted line breaks


_CSV_2021_PATHS = {
    "us_current.csv": "/v1/us/current.csv",
    "us_daily.csv": "/v1/us/daily.csv",
    "states_current.csv": "/v1/states/current.csv",
    "states_info.csv": "/v1/states/info.csv",
    STATES_DAILY_2021: "/v1/states/daily.csv",
}


@archive
@needs_csv_2021
def test_csv2021_files_are_served_byte_for_byte(csv2021_server: Server) -> None:
    assert sorted(p.name for p in CSV_2021.iterdir()) == sorted(_CSV_2021_PATHS)
    for name, path in _CSV_2021_PATHS.items():
        response = csv2021_server.get(path)
        assert response.status_code == 200, path
        assert response.content == (CSV_2021 / name).read_bytes(), path
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert int(response.headers["content-length"]) == len(response.content)
        assert csv2021_server.get(path.replace(".csv", ".json")).status_code == 200
    assert csv2021_server.get("/v1/status.json").status_code == 404
    assert "ctp_v1_csv_20210306" in csv2021_server.stderr.read_text()


def _check_json_twin(server: Server, path: str, file: Path) -> list[Record]:
    """The JSON twin of a CSV file: compact, file's key order, lossless back to the CSV rows."""
    response = server.get(path)
    assert response.status_code == 200, path
    assert response.headers["content-type"] == "application/json"
    records: list[Record] = response.json()
    assert response.content == _compact_array(records)
    data = file.read_bytes()
    header = _csv_rows(data)[0]
    assert all(list(record) == header for record in records), path
    _assert_csv_matches(data, records)
    return records


def _assert_types(
    records: Sequence[Record], strings: set[str], booleans: tuple[str, ...] = ()
) -> None:
    """Listed fields are str (or null), booleans bool, every other field int or null."""
    for record in records:
        for key, value in record.items():
            if key in strings:
                assert value is None or isinstance(value, str), (key, value)
            elif key in booleans:
                assert isinstance(value, bool), (key, value)
            else:
                assert value is None or type(value) is int, (key, value)


_US_STRINGS = {"dateChecked", "lastModified", "hash"}
_STATE_STRINGS = {
    "state",
    "fips",
    "dataQualityGrade",
    "lastUpdateEt",
    "dateModified",
    "checkTimeEt",
    "dateChecked",
    "totalTestResultsSource",
    "hash",
    "grade",
}


@archive
@needs_csv_2021
def test_csv2021_json_twins_are_typed(csv2021_server: Server) -> None:
    us = _check_json_twin(csv2021_server, "/v1/us/daily.json", CSV_2021 / "us_daily.csv")
    current_us = _check_json_twin(
        csv2021_server, "/v1/us/current.json", CSV_2021 / "us_current.csv"
    )
    assert current_us == us[:1]
    assert len(us) == 419
    _assert_types(us, _US_STRINGS)
    assert us[0]["date"] == 20210306
    assert us[0]["dateChecked"] == "2021-03-06T24:00:00Z"  # hour 24, kept as it is
    assert us[0]["recovered"] is None
    assert all(isinstance(r["hash"], str) and len(r["hash"]) == 40 for r in us)

    daily = _check_json_twin(csv2021_server, "/v1/states/daily.json", CSV_2021 / STATES_DAILY_2021)
    current = _check_json_twin(
        csv2021_server, "/v1/states/current.json", CSV_2021 / "states_current.csv"
    )
    for records in (daily, current):
        _assert_types(records, _STATE_STRINGS)
        assert {r["grade"] for r in records} == {""}
        assert all(isinstance(r["dataQualityGrade"], str) for r in records)
        assert all(isinstance(r["lastUpdateEt"], str) for r in records)
        assert all(isinstance(r["fips"], str) and len(r["fips"]) == 2 for r in records)
        assert all(isinstance(r["totalTestResultsSource"], str) for r in records)
    assert daily[0]["fips"] == "02"
    assert daily[0]["date"] == 20201205
    assert {r["date"] for r in current} == {20210306}
    assert any(r["dataQualityGrade"] == "" for r in daily)
    assert any(r["lastUpdateEt"] == "" and r["dateChecked"] is None for r in daily)
    assert any(type(r["probableCases"]) is int for r in daily)
    # Fields were added over time: states/current has hospitalizedDischarged, the daily file
    # of 2020-12-06 not; both have probableCases, which the 2020 snapshot lacks.
    assert "hospitalizedDischarged" in current[0]
    assert "hospitalizedDischarged" not in daily[0]
    assert len(current[0]) == 56
    assert len(daily[0]) == 55
    if ARCHIVE.is_dir():
        old = _csv_rows((ARCHIVE / "states_daily.csv").read_bytes())[0]
        assert "probableCases" not in old
        assert list(daily[0]) != old
        old_us = _csv_rows((ARCHIVE / "us_daily.csv").read_bytes())[0]
        assert sorted(old_us) == sorted(us[0])
        assert old_us != list(us[0])  # same 25 fields, another order

    info = _check_json_twin(csv2021_server, "/v1/states/info.json", CSV_2021 / "states_info.csv")
    assert len(info) == 56
    assert {len(r) for r in info} == {16}
    _assert_types(info, set(info[0]) - {"pum"}, booleans=("pum",))
    assert {r["pum"] for r in info} == {False}
    assert info[0]["fips"] == "02"
    assert "\n" in info[0]["notes"]
    assert any(r["covid19SiteQuinary"] == "" for r in info)
    assert all(isinstance(r["covid19SiteQuinary"], str) for r in info)


@pytest.mark.parametrize(
    "server_name",
    [
        pytest.param("csv2021_server", marks=[archive, needs_csv_2021]),
        pytest.param("website_server", marks=[archive, needs_website]),
    ],
)
def test_2021_per_state_paths_agree_with_the_lists(
    request: pytest.FixtureRequest, server_name: str
) -> None:
    server: Server = request.getfixturevalue(server_name)
    daily = server.json("/v1/states/daily.json")
    by_state: dict[str, list[Record]] = {}
    for record in daily:
        by_state.setdefault(record["state"], []).append(record)
    assert len(by_state) == 56
    for code, records in by_state.items():
        assert server.json(f"/v1/states/{code.lower()}/daily.json") == records
    _assert_csv_matches(server.get("/v1/states/ny/daily.csv").content, by_state["NY"])
    for record in daily[::997]:
        path = f"/v1/states/{record['state'].lower()}/{record['date']}"
        response = server.get(f"{path}.json")
        assert response.content == json.dumps(record, separators=(",", ":")).encode() + b"\n"
        _assert_csv_matches(server.get(f"{path}.csv").content, [record])
    assert server.json("/v1/states/CA/20200401.json") == next(
        r for r in by_state["CA"] if r["date"] == 20200401
    )
    if server_name == "website_server":
        for path in ["/v1/states/ca/current.json", "/v1/states/ca/info.json"]:
            assert server.get(path).status_code == 404
        return
    current = server.json("/v1/states/current.json")
    info = server.json("/v1/states/info.json")
    for record in current:
        assert server.json(f"/v1/states/{record['state'].lower()}/current.json") == record
    for record in info:
        assert server.json(f"/v1/states/{record['state'].lower()}/info.json") == record
    for record in server.json("/v1/us/daily.json")[::50]:
        assert server.json(f"/v1/us/{record['date']}.json") == record


@archive
@needs_website
def test_website_history_is_converted_to_the_api_conventions(website_server: Server) -> None:
    data = (WEBSITE / "all-states-history.csv").read_bytes()
    assert data.startswith(b'"date","state",')
    rows = _csv_rows(data)
    header = rows[0]
    assert "fips" not in header
    assert "hash" not in header
    assert header[2:] == sorted(header[2:])  # the website's alphabetical columns
    response = website_server.get("/v1/states/daily.json")
    records: list[Record] = response.json()
    assert response.content == _compact_array(records)
    assert len(records) == len(rows) - 1 == 20_780
    assert all(list(record) == header for record in records)
    order = [(-r["date"], r["state"]) for r in records]
    assert order == sorted(order)
    assert records[0]["date"] == 20210307
    assert records[0]["state"] == "AK"
    assert records[-1]["date"] == 20200113
    _assert_types(records, {"state"})
    by_key = {(r["date"], r["state"]): r for r in records}
    for row in rows[1::101]:
        cells = dict(zip(header, row, strict=True))
        record = by_key[(int(cells["date"].replace("-", "")), cells["state"])]
        for key in header[2:]:
            assert record[key] == (int(cells[key]) if cells[key] else None), key
    # The CSV is rendered in the v1 style: plain header, YYYYMMDD dates, same records.
    as_csv = website_server.get("/v1/states/daily.csv")
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert as_csv.content.startswith(b"date,state,death,deathConfirmed,")
    assert as_csv.content.split(b"\n")[1].startswith(b"20210307,AK,305,,0,")
    _assert_csv_matches(as_csv.content, records)
    for path in [
        "/v1/us/current.json",
        "/v1/us/daily.json",
        "/v1/us/daily.csv",
        "/v1/us/20210307.json",
        "/v1/states/current.json",
        "/v1/states/info.csv",
        "/v1/status.json",
    ]:
        assert website_server.get(path).status_code == 404, path
    assert "all-states-history.csv" in website_server.stderr.read_text()


# --- the control API: fault injection and request counts ----------------------------------


@pytest.fixture(scope="module")
def control_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--synthetic", "--start", "2020-08-01", "--end", "2020-09-01", "--control"]
    with run_server(args, tmp_path_factory.mktemp("control")) as server:
        yield server


@pytest.fixture
def control(control_server: Server) -> Server:
    """The control server with no faults and no counts."""
    assert control_server.client.delete("/_control/faults").status_code == 204
    assert control_server.client.delete("/_control/requests").status_code == 204
    return control_server


def _fault(server: Server, path: str, fault: str, **params: Any) -> None:
    response = server.client.put("/_control/faults", json={"path": path, "fault": fault, **params})
    assert response.status_code == 200, response.text
    assert response.json()["fault"] == fault


US_CURRENT = "/v1/us/current.json"


def test_control_paths_are_404_without_the_flag(synthetic_server: Server) -> None:
    for method, path in [
        ("GET", "/_control/faults"),
        ("PUT", "/_control/faults"),
        ("DELETE", "/_control/faults"),
        ("GET", "/_control/requests"),
        ("DELETE", "/_control/requests"),
    ]:
        response = synthetic_server.client.request(method, path, json={})
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": "not found", "path": path}


def test_control_status_fault_takes_precedence(control: Server) -> None:
    etag = control.get(US_CURRENT).headers["etag"]
    _fault(control, US_CURRENT, "status", status=503)
    for headers in [{}, {"If-None-Match": etag}]:
        response = control.get(US_CURRENT, headers=headers)
        assert response.status_code == 503
        assert response.json()["error"] == "injected fault"
        assert response.headers["content-type"] == "application/json"
    assert control.get("/v1/us/daily.json").status_code == 200  # other paths are untouched
    _fault(control, US_CURRENT, "status", status=429, retry_after=7)  # replaces the 503
    response = control.get(US_CURRENT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert control.client.delete("/_control/faults").status_code == 204
    assert control.get(US_CURRENT).status_code == 200


def test_control_delay_fault_exceeds_a_client_timeout(control: Server) -> None:
    _fault(control, US_CURRENT, "delay", seconds=5.0, times=1)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        control.get(US_CURRENT, timeout=0.3)
    # The server stays responsive while that request waits, and the fault was used up.
    assert control.get("/v1/us/daily.json", timeout=1.0).status_code == 200
    assert control.get(US_CURRENT, timeout=1.0).status_code == 200
    assert time.monotonic() - started < 1.5
    # The abandoned request is counted, but was never answered.
    counts = control.json("/_control/requests")[US_CURRENT]
    assert counts == {"total": 2, "conditional": 0, "status": {"200": 1}}
    etag = control.get(US_CURRENT).headers["etag"]
    _fault(control, US_CURRENT, "delay", seconds=0.3)
    started = time.monotonic()
    response = control.get(US_CURRENT, headers={"If-None-Match": etag})
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 304  # then answers as usual


def _read_raw(server: Server, path: str) -> tuple[int, bytes, Exception | None]:
    """GET ``path`` as a stream: the announced Content-Length, the bytes received, the error."""
    received = b""
    with server.client.stream("GET", path) as response:
        assert response.status_code == 200
        announced = int(response.headers["content-length"])
        try:
            for chunk in response.iter_raw():
                received += chunk
        except httpx.TransportError as error:
            return announced, received, error
    return announced, received, None


def test_control_truncate_fault_breaks_the_body(control: Server) -> None:
    full = control.get(US_CURRENT).content
    _fault(control, US_CURRENT, "truncate")
    with pytest.raises(httpx.RemoteProtocolError):
        control.get(US_CURRENT)
    announced, received, error = _read_raw(control, US_CURRENT)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert announced == len(full)
    assert received == full[: len(full) // 2]
    assert control.get("/v1/us/daily.json").status_code == 200  # the server carries on


def test_control_empty_fault(control: Server) -> None:
    normal = control.get(US_CURRENT)
    _fault(control, US_CURRENT, "empty")
    response = control.get(US_CURRENT, headers={"If-None-Match": normal.headers["etag"]})
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["content-type"] == "application/json"
    assert response.headers["etag"] not in (normal.headers["etag"], None)


def test_control_schema_fault(control: Server) -> None:
    paths = ["/v1/states/daily.json", "/v1/us/20200815.json", "/v1/states/ca/daily.csv"]
    normal = {path: control.get(path) for path in paths}
    for path in paths:
        _fault(control, path, "schema")
    records = control.json("/v1/states/daily.json")
    expected = normal["/v1/states/daily.json"].json()
    assert len(records) == len(expected) == 56 * 32
    for got, was in zip(records, expected, strict=True):
        assert "positive" not in got
        assert got["positiveCases"] == was["positive"]
        day = str(was["date"])
        assert got["date"] == f"{day[:4]}-{day[4:6]}-{day[6:]}"
        assert list(got) == [("positiveCases" if k == "positive" else k) for k in was]
    single = control.get("/v1/us/20200815.json")
    assert single.json()["date"] == "2020-08-15"
    assert "positiveCases" in single.json()
    assert single.headers["etag"] != normal["/v1/us/20200815.json"].headers["etag"]
    as_csv = control.get("/v1/states/ca/daily.csv")
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    rows = _csv_rows(as_csv.content)
    old_rows = _csv_rows(normal["/v1/states/ca/daily.csv"].content)
    assert rows[0] == [("positiveCases" if k == "positive" else k) for k in old_rows[0]]
    assert rows[1][0] == "2020-09-01"
    assert rows[1][1:] == old_rows[1][1:]


def test_control_content_type_fault(control: Server) -> None:
    normal = control.get(US_CURRENT)
    _fault(control, US_CURRENT, "content_type")
    response = control.get(US_CURRENT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html"
    assert response.content == normal.content


def test_control_not_modified_fault(control: Server) -> None:
    normal = control.get(US_CURRENT)
    _fault(control, US_CURRENT, "not_modified")
    response = control.get(US_CURRENT)  # no conditional header at all
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == normal.headers["etag"]


def test_control_body_fault_publishes_other_data(control: Server) -> None:
    normal = control.get(US_CURRENT)
    published = [{"date": 20991231, "states": 3, "positive": -5, "note": "é"}]
    _fault(control, US_CURRENT, "body", body=published)
    first = control.get(US_CURRENT, headers={"If-None-Match": normal.headers["etag"]})
    assert first.status_code == 200
    assert (
        first.content
        == (json.dumps(published, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    )
    assert first.headers["content-type"] == "application/json"
    assert first.headers["etag"] != normal.headers["etag"]
    assert control.get(US_CURRENT).headers["etag"] == first.headers["etag"]
    _fault(control, US_CURRENT, "body", body=published[:0])
    second = control.get(US_CURRENT)
    assert second.json() == []
    assert second.headers["etag"] != first.headers["etag"]
    listed = control.json("/_control/faults")
    assert listed == {US_CURRENT: {"fault": "body", "body": [], "times": None}}


def test_control_times_clears_the_fault(control: Server) -> None:
    _fault(control, US_CURRENT, "status", status=500, times=2)
    assert control.json("/_control/faults")[US_CURRENT]["times"] == 2
    assert control.client.head(US_CURRENT).status_code == 200  # HEADs are not faulted
    assert control.get(US_CURRENT).status_code == 500
    assert control.json("/_control/faults")[US_CURRENT]["times"] == 1
    assert control.get(US_CURRENT).status_code == 500
    assert control.json("/_control/faults") == {}
    assert control.get(US_CURRENT).status_code == 200


def test_control_faults_match_the_exact_path(control: Server) -> None:
    _fault(control, "/v1/states/ca/current.json", "status", status=500)
    assert control.get("/v1/states/ca/current.json").status_code == 500
    assert control.get("/v1/states/CA/current.json").status_code == 200
    assert control.get("/v1/states/ca/current.csv").status_code == 200
    _fault(control, "/v1/nothing.json", "body", body={"ok": True})  # unknown paths too
    assert control.json("/v1/nothing.json") == {"ok": True}


def test_control_counts_requests(control: Server) -> None:
    normal = control.get(US_CURRENT)
    control.get(US_CURRENT)
    control.get(US_CURRENT, headers={"If-None-Match": normal.headers["etag"]})
    control.get(US_CURRENT, headers={"If-Modified-Since": normal.headers["last-modified"]})
    control.get(US_CURRENT, headers={"If-None-Match": '"other"'})
    control.client.head("/v1/states/ca/daily.json")
    control.get("/v1/states/zz/daily.json")
    _fault(control, "/v1/us/daily.json", "status", status=503, times=1)
    control.get("/v1/us/daily.json")
    control.get("/v1/us/daily.json")
    control.client.post(US_CURRENT)  # not a GET or HEAD: not counted
    assert control.json("/_control/requests") == {
        US_CURRENT: {"total": 5, "conditional": 3, "status": {"200": 3, "304": 2}},
        "/v1/states/ca/daily.json": {"total": 1, "conditional": 0, "status": {"200": 1}},
        "/v1/states/zz/daily.json": {"total": 1, "conditional": 0, "status": {"404": 1}},
        "/v1/us/daily.json": {"total": 2, "conditional": 0, "status": {"200": 1, "503": 1}},
    }
    assert control.client.delete("/_control/requests").status_code == 204
    assert control.json("/_control/requests") == {}


@pytest.mark.parametrize(
    "spec",
    [
        {"fault": "status", "status": 500},
        {"path": "v1/us/current.json", "fault": "status", "status": 500},
        {"path": US_CURRENT, "fault": "explode"},
        {"path": US_CURRENT, "fault": "status"},
        {"path": US_CURRENT, "fault": "status", "status": 200},
        {"path": US_CURRENT, "fault": "status", "status": "500"},
        {"path": US_CURRENT, "fault": "delay", "seconds": -1},
        {"path": US_CURRENT, "fault": "delay", "second": 1},
        {"path": US_CURRENT, "fault": "body"},
        {"path": US_CURRENT, "fault": "empty", "times": 0},
        {"path": US_CURRENT, "fault": "empty", "times": 1.5},
        [],
    ],
)
def test_control_rejects_invalid_faults(control: Server, spec: Any) -> None:
    response = control.client.put("/_control/faults", json=spec)
    assert response.status_code == 400
    assert response.json()["error"]
    assert control.json("/_control/faults") == {}


def test_control_api_methods_and_unknown_paths(control: Server) -> None:
    assert control.client.put("/_control/faults", content=b"{").status_code == 400
    assert control.client.post("/_control/faults", json={}).status_code == 405
    assert control.client.put("/_control/requests").status_code == 405
    assert control.get("/_control/nothing").status_code == 404
    assert "control API" in control.stderr.read_text()
