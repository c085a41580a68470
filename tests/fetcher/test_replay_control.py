"""The replay upstream's control API (``--control``): fault injection (status, delay,
truncated and empty bodies, schema changes, content types, 304s, chosen bodies) and request
counts, and its absence without the flag."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from replay_support import (
    Server,
    csv_rows,
    run_server,
    serve_synthetic,
)

pytestmark = pytest.mark.unit  # `make test-fast`


@pytest.fixture(scope="module")
def synthetic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_synthetic(tmp_path_factory)


@pytest.fixture(scope="module")
def control_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--synthetic", "--start", "2020-08-01", "--end", "2020-09-01", "--control"]
    with run_server(args, tmp_path_factory.mktemp("control")) as server:
        yield server


# --- the control API: fault injection and request counts ----------------------------------


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
    rows = csv_rows(as_csv.content)
    old_rows = csv_rows(normal["/v1/states/ca/daily.csv"].content)
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
