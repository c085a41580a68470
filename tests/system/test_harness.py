"""The test harness's own shortcuts (tests/conftest.py), checked against the installed
libraries: if one stops holding, the suite gets slower or wrong without any other test saying
why. And its fixtures' promises (the `recent` upstream, the order files are handed out in)."""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace
from typing import cast

import httpx
import httpx._transports.default as httpx_transports
import pytest

from conftest import DURATIONS, longest_files_first, recent_conflicts, recorded_durations
from support import RECENT_DAYS, Upstream

pytestmark = pytest.mark.unit  # unit: `make test-fast`


def test_plain_http_clients_share_one_default_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest shares httpx's default SSL context: a Client (so each httpx.get()) builds none
    after the first, which still verifies certificates; any other verify gets its own."""
    httpx.Client().close()  # the shared context exists from here on
    built: list[object] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    for _ in range(3):
        httpx.Client().close()
        asyncio.run(httpx.AsyncClient().aclose())
    assert built == [], "each httpx Client built an SSL context of its own again"

    create = httpx_transports.create_ssl_context  # type: ignore[attr-defined]
    shared = create()
    assert create(verify=True) is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED
    assert shared.check_hostname
    unverified = create(verify=False)
    assert unverified is not shared
    assert unverified.verify_mode == ssl.CERT_NONE
    own = ssl.create_default_context()
    assert create(verify=own) is own
    assert shared.verify_mode == ssl.CERT_REQUIRED  # untouched by the others


def test_workers_take_the_files_that_took_longest_first() -> None:
    def item(nodeid: str) -> pytest.Item:
        return cast("pytest.Item", SimpleNamespace(nodeid=nodeid))

    items = [
        item("tests/a.py::one"),
        item("tests/b.py::one"),
        item("tests/a.py::two"),
        item("tests/new.py::one"),
        item("tests/c.py::one"),
    ]
    seconds = {"tests/a.py": 3.0, "tests/b.py": 40.0, "tests/c.py": 12.5, "tests/gone.py": 99.0}
    ordered = [i.nodeid for i in longest_files_first(items, seconds)]
    # A file not recorded yet first; then by seconds; a file's tests together, in their order.
    assert ordered == [
        "tests/new.py::one",
        "tests/b.py::one",
        "tests/c.py::one",
        "tests/a.py::one",
        "tests/a.py::two",
    ]


def test_the_recorded_durations_name_only_test_files_that_exist() -> None:
    """tests/durations.json comes from a run (`make test-durations`): a file renamed or
    removed since would keep a stale entry, and its new name would be taken first."""
    recorded = recorded_durations()
    assert recorded, f"{DURATIONS} is missing or empty: run `make test-durations`"
    root = DURATIONS.parent.parent
    assert [name for name in recorded if not (root / name).is_file()] == []


@pytest.mark.recent
def test_a_recent_tests_upstream_serves_the_last_days_of_the_sessions_data(
    upstream: Upstream, upstream_server: Upstream
) -> None:
    """A test marked `recent` gets, as ``upstream`` (and so in ``service_env``), the replay of
    the session's dataset cut to its last RECENT_DAYS days: the newest daily records, and the
    current and info files byte for byte."""
    assert upstream.url != upstream_server.url
    whole = upstream_server.get("/v1/us/daily.json").json()
    newest = sorted({record["date"] for record in whole}, reverse=True)[:RECENT_DAYS]
    assert upstream.get("/v1/us/daily.json").json() == [r for r in whole if r["date"] in newest]
    states = upstream_server.get("/v1/states/daily.json").json()
    kept = upstream.get("/v1/states/daily.json").json()
    assert kept == [r for r in states if r["date"] in newest]
    for path in ("/v1/us/current.json", "/v1/states/current.json", "/v1/states/info.json"):
        assert upstream.get(path).content == upstream_server.get(path).content, path


def test_an_unmarked_tests_upstream_is_the_sessions(
    upstream: Upstream, upstream_server: Upstream
) -> None:
    assert upstream.url == upstream_server.url


def test_a_recent_test_that_takes_the_whole_datasets_template_is_refused_at_collection() -> None:
    def item(nodeid: str, marked: bool, *fixtures: str) -> pytest.Item:
        marks = {"recent": pytest.mark.recent.mark} if marked else {}
        fake = SimpleNamespace(
            nodeid=nodeid, fixturenames=["request", *fixtures], get_closest_marker=marks.get
        )
        return cast(pytest.Item, fake)

    items = [
        item("a.py::mixed", True, "service_env", "published_env"),
        item("a.py::fine", True, "service_env", "upstream"),
        item("b.py::unmarked", False, "published_env", "shared_api"),
        item("b.py::shared", True, "shared_api"),
    ]
    found = recent_conflicts(items)
    assert [line.split(":")[0:3] for line in found] == [
        ["a.py", "", "mixed"],
        ["b.py", "", "shared"],
    ]
    assert "published_env" in found[0]
    assert "shared_api" in found[1]
