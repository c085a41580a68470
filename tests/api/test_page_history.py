"""The page over the COVID Tracking Project's real editions (issue 24, item 7): revised values
marked on the charts, and the view redrawn as the api published it at an instant (``as_of``).

The replay upstream serves edition 1, the fetcher loads it, then edition 2 (which revised
Michigan's March 2020, among 4,526 state-days); the api under gunicorn, Debian's Chromium
via Playwright, as in test_page.py. Expected marks and values come from the api's own
revisions.json. Its own module: the stack must be built before the browser starts (the
fetcher's migrations run an event loop, which Playwright's running one forbids).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser

from devstack.procs import free_port, wait_until
from stacks import Stack, migrate, new_database, redis_database, wait_ready
from support import (
    ARCHIVE,
    ApiUrl,
    Upstream,
    clean_env,
    fail_fast_env,
    python_module,
    run_fetcher,
    spawn,
    start_api,
)
from test_page import (
    DESKTOP,
    PHONE,
    REVISED,
    _data_requests,
    _iso,
    _screenshot,
    _settled,
    _shown_instant,
    assert_charts_match,
    browser,
    shown_series,
    visit,
)

__all__ = ["browser"]  # the module's browser fixture (started after the stack)


# -- the real editions: revised values and the view as published then ------------------------


@dataclass(frozen=True)
class EditionsStack(Stack):
    """The page's stack over the COVID Tracking Project's real editions: edition 1 loaded
    and served at ``first_served``, then edition 2 loaded."""

    first_served: str = ""


@pytest.fixture(scope="module")
def editions_stack(
    redis_server_url: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EditionsStack]:
    if not ARCHIVE.is_dir():
        pytest.skip(f"the real archive {ARCHIVE} is absent")
    log_dir = tmp_path_factory.mktemp("page-editions")
    port = free_port()
    options = ("--host", "127.0.0.1", "--port", str(port), "--control", "--ctp-editions")
    process = spawn(
        "upstream-editions", python_module("replay_upstream", *options), clean_env(), log_dir
    )
    try:
        upstream = Upstream(f"http://127.0.0.1:{port}", True)
        process.wait_http(f"{upstream.url}/v1/states/daily.json", timeout=120)
        with fresh_stack(redis_server_url, postgres_server_url, upstream, log_dir) as (base, env):
            first = httpx.get(f"{base}/v1/states/mi/daily.json", timeout=30)
            assert first.status_code == 200
            first_served = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            # The next second: the instant is strictly between the two publishes.
            wait_until(
                lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") > first_served,
                5,
                interval=0.05,
                what="the next second",
            )
            moved = httpx.post(f"{upstream.url}/_control/edition", timeout=120)
            moved.raise_for_status()
            assert moved.json()["edition"] == 2
            result = run_fetcher("refresh-once", env, timeout=300)
            assert result.returncode == 0, result.stderr.decode()[-3000:]

            def revised() -> bool:
                path = "/v1/states/mi/revisions.json?field=positive&from=20200301&to=20200301"
                return bool(httpx.get(f"{base}{path}", timeout=30).json())

            wait_until(revised, 30, what="edition 2's revisions served")
            yield EditionsStack(base, env, upstream, log_dir, first_served)
    finally:
        process.stop()


@contextmanager
def fresh_stack(
    redis_server_url: str, postgres_server_url: str, upstream: Upstream, log_dir: Path
) -> Iterator[tuple[ApiUrl, dict[str, str]]]:
    """Stores of their own (not the session's template: the editions are another upstream)
    loaded by one ``refresh-once`` of ``upstream``, and the api under gunicorn over them."""
    with (
        redis_database(redis_server_url) as redis_url,
        new_database(postgres_server_url, "page_editions") as database_url,
    ):
        migrate(database_url)
        env = {
            **fail_fast_env(redis_url, database_url, upstream.url),
            "UPSTREAM_TIMEOUT_SECONDS": "60",  # the editions are built when first asked
        }
        result = run_fetcher("refresh-once", env, timeout=300)
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        process, base = start_api(env, log_dir)
        try:
            wait_ready(base)
            yield base, env
        finally:
            process.stop()


MICHIGAN_SPRING = "/?state=mi&from=2020-03-01&to=2020-04-30"  # hospitalizations from April 9


def _number(value: Any) -> str:
    """A value as the page writes it (en-US grouping; no value: 'no value')."""
    if value is None:
        return "no value"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def test_revised_values_are_marked_on_the_charts(
    editions_stack: EditionsStack, browser: Browser
) -> None:
    """Edition 2 revised Michigan's spring 2020: each revised value of a chart's daily field
    has a mark with its story (old -> new, when first seen), the summary counts them, the
    list tells them; all derived from the api's own revisions.json."""
    stack = editions_stack
    with visit(browser, stack.base, MICHIGAN_SPRING, viewport=DESKTOP) as seen:
        seen.ready()
        page = seen.page
        page.wait_for_selector("#revised:not([hidden])")
        series = shown_series(seen)
        assert_charts_match(seen, series)
        dates = {r["date"] for r in series["daily"]}
        expected: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for chart, field_name in REVISED.items():
            found = stack.json(
                f"/v1/states/mi/revisions.json?field={field_name}&from={min(dates)}&to={max(dates)}"
            )
            by_date: dict[int, list[dict[str, Any]]] = {}
            for revision in found:
                if revision["date"] in dates:
                    by_date.setdefault(revision["date"], []).append(revision)
            expected[chart] = by_date
            marks = page.locator(f"#chart-{chart} path.revised")
            assert sorted(
                int(d) for d in marks.evaluate_all("(ms) => ms.map((m) => m.dataset.date)")
            ) == sorted(by_date), chart
            for date, revisions in by_date.items():
                story = page.locator(f"#chart-{chart} path.revised[data-date='{date}'] title")
                text = story.text_content() or ""
                for revision in revisions:
                    assert f"{_number(revision['old'])} → {_number(revision['new'])}" in text
                    seen_at = datetime.fromisoformat(revision["firstSeen"].replace("Z", "+00:00"))
                    assert f"(first seen {seen_at:%Y-%m-%d %H:%M:%S} UTC)" in text, text
        total = sum(len(by_date) for by_date in expected.values())
        assert total > 0  # edition 2 revised Michigan's March (cases and tests at least)
        assert expected["cases"]
        heading = page.locator("#revised-summary").text_content() or ""
        assert heading.startswith(f"{total} values of this view revised since first published")
        assert page.locator("#revised-list li").count() == total
        # The readout of a revised day says so, with the value first published.
        date, revisions = max(expected["cases"].items())
        page.locator("#chart-cases svg").focus()
        page.keyboard.press("End")
        every = sorted(dates | {r["date"] for r in series["derived"]})
        for _ in range(len(every) - 1 - every.index(date)):
            page.keyboard.press("ArrowLeft")
        readout = page.locator("#cases-readout").text_content() or ""
        assert f"◆ revised: first {_number(revisions[-1]['old'])}" in readout, readout
        page.click("#revised summary")
        assert page.locator("#revised-list").is_visible()
        _screenshot(page, "page-revisions.png")
        assert seen.problems() == []

    # At phone width in the dark scheme: nothing overflows, and the list opens by keyboard.
    with visit(browser, stack.base, MICHIGAN_SPRING, viewport=PHONE, color_scheme="dark") as seen:
        seen.ready()
        page = seen.page
        page.wait_for_selector("#revised:not([hidden])")
        assert page.locator("#chart-cases path.revised").count() == len(expected["cases"])
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        page.focus("#revised summary")
        page.keyboard.press("Enter")
        assert page.locator("#revised-list").is_visible()
        _screenshot(page, "page-revisions-phone-dark.png")
        assert seen.problems() == []


def test_as_of_redraws_the_view_as_published_then(
    editions_stack: EditionsStack, browser: Browser
) -> None:
    """NEEDS the api's as_of (issue 24 item 2, branch i24-asof): as of an instant between
    the two editions, the page draws edition 1's values (each revised value its ``old``) and
    marks no revision; then "Latest" draws edition 2's again."""
    stack = editions_stack
    path = f"{MICHIGAN_SPRING}&as_of={stack.first_served}"
    revisions = stack.json(
        "/v1/states/mi/revisions.json?field=positiveIncrease&from=20200301&to=20200430"
    )
    assert revisions
    with visit(browser, stack.base, path, viewport=DESKTOP) as seen:
        seen.ready()
        page = seen.page
        then = shown_series(seen)  # the page's own links, carrying as_of
        assert_charts_match(seen, then)
        old = {r["date"]: r["positiveIncrease"] for r in then["daily"]}
        oldest_first = sorted(revisions, key=lambda r: r["firstSeen"])
        first_values: dict[int, Any] = {}
        for revision in oldest_first:
            first_values.setdefault(revision["date"], revision["old"])
        for date, value in first_values.items():
            assert old.get(date) == value, (date, old.get(date), value)
        assert page.locator("path.revised").count() == 0
        assert page.locator("#revised").is_hidden()
        # The table shows the values as first published.
        date = max(first_values)
        cell = page.locator(f"#table tbody tr:has(th:text-is('{_iso(date)}')) td").first
        assert cell.text_content() == _number(first_values[date])

        page.click("#as-of-latest")
        _settled(seen, "#daily-json:not([href*='as_of'])")
        page.wait_for_selector("#revised:not([hidden])")
        latest = shown_series(seen)
        assert_charts_match(seen, latest)
        assert latest["daily"] != then["daily"]
        newest_values: dict[int, Any] = {}
        for revision in revisions:  # newest first
            newest_values.setdefault(revision["date"], revision["new"])
        now = {r["date"]: r["positiveIncrease"] for r in latest["daily"]}
        assert {d: now.get(d) for d in newest_values} == newest_values
        assert page.locator("#chart-cases path.revised").count() == len(newest_values)
        assert seen.problems() == []


@pytest.mark.parametrize(
    ("instant", "status"),
    [("2000-01-01T00:00:00Z", 404), ("2999-01-01T00:00:00Z", 422)],
    ids=["before-the-first-publish", "in-the-future"],
)
def test_an_as_of_the_api_refuses_is_shown_as_its_error(
    editions_stack: EditionsStack, browser: Browser, instant: str, status: int
) -> None:
    """NEEDS the api's as_of (branch i24-asof): an instant before the first publish (404
    not_published) or in the future (422) is answered in the error shape naming as_of; the
    page shows the api's message in its notices, and stays on the place asked."""
    stack = editions_stack
    with visit(browser, stack.base, f"/?state=mi&as_of={instant}", viewport=DESKTOP) as seen:
        seen.page.wait_for_selector("#main[aria-busy='false']")
        seen.page.wait_for_selector("#notices p")
        daily = next(r for r in _data_requests(seen) if "/daily.json" in r.url)
        answer = httpx.get(daily.url, timeout=30)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["parameter"] == "as_of"
        seen.page.get_by_text(f"Could not load the data: {error['message']}").wait_for()
        assert parse_qs(urlsplit(seen.page.url).query) == {"state": ["mi"], "as_of": [instant]}
        assert _shown_instant(seen.page) == instant.removesuffix("Z")
        assert "/states/mi/" in daily.url  # no fallback to the US: the place is known
