"""The replay upstream serves the archived CTP folders (``../shared/covidtracking``): the 2020
API snapshot byte for byte with its derived JSON, and the 2021 folders (the v1 CSV backup, the
website's states history) recognised, counted and converted. Marked ``archive``, skipped, saying
so, where a folder is absent."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest

from replay_support import (
    ARCHIVE,
    CSV_2021,
    SHARED,
    STATES_DAILY_2021,
    WEBSITE,
    Record,
    Server,
    archive,
    archive_json,
    assert_csv_matches,
    compact_array,
    csv_rows,
    needs_archive,
    needs_csv_2021,
    needs_website,
    serve_folder,
)
from replay_upstream.dataset import FILE_PATHS, V1_LAYOUT, WEBSITE_LAYOUT, load_dataset
from replay_upstream.synthetic import (
    synthetic_files,
)

pytestmark = pytest.mark.unit  # `make test-fast`


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_folder(ARCHIVE, tmp_path_factory)


@pytest.fixture(scope="module")
def csv2021_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_folder(CSV_2021, tmp_path_factory)


@pytest.fixture(scope="module")
def website_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_folder(WEBSITE, tmp_path_factory)


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
    assert response.content == compact_array(records)
    csv_bytes = (ARCHIVE / "states_daily.csv").read_bytes()
    header = csv_rows(csv_bytes)[0]
    assert all(list(record) == header for record in records)
    # Lossless: written back as CSV cells, the records give the archived rows again.
    assert_csv_matches(csv_bytes, records)
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
    assert daily == archive_json("states_current.json")


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
    assert len(csv_rows(server.get("/v1/states/daily.csv").content)) == daily_count + 1
    assert len({r["state"] for r in daily}) == 56
    info = server.get("/v1/states/info.json")
    if info_count is None:
        assert info.status_code == 404
        return
    assert len(info.json()) == info_count
    info_csv = server.get("/v1/states/info.csv").content
    assert len(csv_rows(info_csv)) == info_count + 1
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
    assert response.content == compact_array(records)
    data = file.read_bytes()
    header = csv_rows(data)[0]
    assert all(list(record) == header for record in records), path
    assert_csv_matches(data, records)
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
        old = csv_rows((ARCHIVE / "states_daily.csv").read_bytes())[0]
        assert "probableCases" not in old
        assert list(daily[0]) != old
        old_us = csv_rows((ARCHIVE / "us_daily.csv").read_bytes())[0]
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
    assert_csv_matches(server.get("/v1/states/ny/daily.csv").content, by_state["NY"])
    for record in daily[::997]:
        path = f"/v1/states/{record['state'].lower()}/{record['date']}"
        response = server.get(f"{path}.json")
        assert response.content == json.dumps(record, separators=(",", ":")).encode() + b"\n"
        assert_csv_matches(server.get(f"{path}.csv").content, [record])
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
    rows = csv_rows(data)
    header = rows[0]
    assert "fips" not in header
    assert "hash" not in header
    assert header[2:] == sorted(header[2:])  # the website's alphabetical columns
    response = website_server.get("/v1/states/daily.json")
    records: list[Record] = response.json()
    assert response.content == compact_array(records)
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
    assert_csv_matches(as_csv.content, records)
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
