"""The page for people at ``/``, over HTTP and in a real browser.

One stack for the module (``stacks.loaded_stack``): the api under gunicorn over a clone of
the data one ``refresh-once`` loaded from the replay upstream (the real archive when
../shared/covidtracking is there, else the synthetic dataset). The browser is Debian's
Chromium (``/usr/bin/chromium``, installed by .ci/install-tools) driven by Playwright for
Python; without it the browser tests skip on a developer's machine and fail in CI.

What the charts draw is compared with the api's own JSON: the page links to the JSON of
exactly what it shows, and each chart must have one bar per record with a daily value and
one line vertex per record with an average. The bytes a first load and a state change cost
are printed in the "measured" section; screenshots go to .artifacts/.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from covid_stats_runtime.http import error_cache_control
from devstack.procs import free_port, wait_until
from stacks import Stack, Template, loaded_stack
from support import REPO, Upstream, run_fetcher, start_api, summary

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium as root, headless, with nothing that reaches out to the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / ".artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 20_000

# The daily field whose revisions each chart marks (on its bars, or on its line).
REVISED = {
    "cases": "positiveIncrease",
    "deaths": "deathIncrease",
    "tests": "totalTestResultsIncrease",
    "hospitalized": "hospitalizedCurrently",
}
# What each chart must draw: (bars, line), each (series, field) of the api's records.
CHARTS: dict[str, tuple[tuple[str, str] | None, tuple[str, str]]] = {
    "cases": (("daily", "positiveIncrease"), ("derived", "positiveIncreaseAvg7d")),
    "deaths": (("daily", "deathIncrease"), ("derived", "deathIncreaseAvg7d")),
    "tests": (
        ("daily", "totalTestResultsIncrease"),
        ("derived", "totalTestResultsIncreaseAvg7d"),
    ),
    "hospitalized": (None, ("daily", "hospitalizedCurrently")),
    "positivity": (("derived", "testPositivity"), ("derived", "testPositivity7d")),
}


@pytest.fixture(scope="module")
def stack(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("page")
    with loaded_stack(template, redis_server_url, upstream_server, log_dir) as (base, env):
        yield Stack(base, env, upstream_server, log_dir)


class _Refs(HTMLParser):
    """The URLs a page's markup loads (scripts, stylesheets, icons) and links to."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and "src" in values:
            self.loads.append(values["src"])
        elif tag == "link" and "href" in values:
            self.loads.append(values["href"])
        elif tag == "a" and "href" in values:
            self.links.append(values["href"])
        elif tag == "body":
            self.body = values


def refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


# -- over HTTP -------------------------------------------------------------------------------


def csp_directives(value: str) -> dict[str, list[str]]:
    directives = {}
    for part in value.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def test_the_page_and_its_assets_are_fixed_bytes_with_etag_gzip_and_a_strict_csp(
    stack: Stack,
) -> None:
    page = stack.get("/", **{"Accept-Encoding": "identity"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"  # revalidated (304) at each visit
    policy = csp_directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "img-src", "connect-src"):
        assert policy[directive] == ["'self'"], directive
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    # The query string (the view: state, dates) does not change the page.
    shared = stack.get("/?state=ca&from=2020-06-01", **{"Accept-Encoding": "identity"})
    assert shared.content == page.content

    markup = refs(page.text)
    assert len(markup.loads) == 3  # the script, the stylesheet, the icon
    sizes = {"page": (len(page.content), 0)}
    for url in ["/", *markup.loads]:
        plain = stack.get(url, **{"Accept-Encoding": "identity"})
        assert plain.status_code == 200, url
        assert plain.headers["content-security-policy"] == page.headers["content-security-policy"]
        if url != "/":
            # /assets/<name>.<digest>.<ext>: the URL changes with the bytes, cached for a year
            match = re.fullmatch(r"/assets/([a-z]+)\.([0-9a-f]{12})\.(js|css|svg)", url)
            assert match, url
            assert hashlib.sha256(plain.content).hexdigest()[:12] == match[2], url
            assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
        etag = plain.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        zipped = httpx.get(f"{stack.base}{url}", headers={"Accept-Encoding": "gzip"})
        if len(plain.content) > 1024:  # the icon is too small to gain
            assert zipped.headers["content-encoding"] == "gzip", url
        raw_gzip = int(zipped.headers["content-length"])
        assert zipped.content == plain.content
        for tag, accept in ((etag, "identity"), (zipped.headers["etag"], "gzip")):
            # A 304 carries the tag of the representation the 200 would send.
            again = stack.get(url, **{"If-None-Match": tag, "Accept-Encoding": accept})
            assert again.status_code == 304, url
            assert again.content == b""
            assert again.headers["etag"] == tag, url
        head = httpx.head(f"{stack.base}{url}")
        assert head.status_code == 200
        assert head.content == b""
        sizes["page" if url == "/" else url.split("/")[-1]] = (len(plain.content), raw_gzip)
    total_raw = sum(raw for raw, _ in sizes.values())
    total_gzip = sum(packed for _, packed in sizes.values())
    for name, (raw, packed) in sizes.items():
        summary(f"page: {name}: {raw:,} bytes, {packed:,} gzipped")
    summary(f"page: page and assets: {total_raw:,} bytes, {total_gzip:,} gzipped")
    assert total_gzip <= 100 * 1024

    not_allowed = httpx.post(f"{stack.base}/")
    assert not_allowed.status_code == 405
    assert not_allowed.json()["error"]["code"] == "method_not_allowed"
    assert stack.get("/assets/page.000000000000.js").status_code == 404
    assert "/" not in stack.json("/openapi.json")["paths"]


def test_the_page_links_the_api_by_its_routes_and_loads_nothing_from_elsewhere(
    stack: Stack,
) -> None:
    page = stack.get("/")
    markup = refs(page.text)
    for url in markup.loads:
        assert url.startswith("/assets/"), url
    urls = {key: value for key, value in markup.body.items() if key.startswith("data-")}
    assert urls["data-docs"] == "/docs"
    assert stack.get(urls["data-docs"]).status_code == 200
    assert stack.json(urls["data-status"])["buildTime"]
    assert len(stack.json(urls["data-states"])) >= 50
    keys = ("daily", "derived", "revisions")
    for key in [f"data-{place}-{kind}" for place in ("us", "state") for kind in keys]:
        for fmt in ("json", "csv"):
            path = urls[key].replace("{state}", "wa").replace("{fmt}", fmt)
            assert stack.get(path).status_code == 200, path
    # The only other origins named are the attribution's links (followed only if clicked).
    script = stack.get(markup.loads[[u.endswith(".js") for u in markup.loads].index(True)]).text
    style = stack.get(markup.loads[[u.endswith(".css") for u in markup.loads].index(True)]).text
    assert "http" not in style
    assert re.findall(r"https?://[^\s\"'`]+", script) == ["http://www.w3.org/2000/svg"]
    outside = [link for link in markup.links if urlsplit(link).netloc]
    assert sorted(urlsplit(link).netloc for link in outside) == [
        "covidtracking.com",
        "creativecommons.org",
    ]


def test_the_page_needs_no_store(stack: Stack, tmp_path: Path) -> None:
    """The page and its assets are answered from the worker's memory: with Redis and
    PostgreSQL unreachable, they are still served (the data is not)."""
    nowhere = {
        **stack.env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"postgresql://covid_stats@127.0.0.1:{free_port()}/covid_stats",
    }
    process, base = start_api(nowhere, tmp_path, workers=1)
    try:
        page = httpx.get(f"{base}/")
        assert page.status_code == 200
        for url in refs(page.text).loads:
            assert httpx.get(f"{base}{url}").status_code == 200
        assert httpx.get(f"{base}/v1/us/current.json").status_code == 503
    finally:
        process.stop()


def _raw(base: str, request: bytes) -> tuple[int, dict[str, list[str]]]:
    """The status and headers of the answer to raw bytes (the server closes after it)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(head[0].split()[1]), headers


def test_every_answer_carries_nosniff_and_no_server_banner(stack: Stack) -> None:
    """Whoever writes the answer: the fast path, FastAPI (data, errors, docs, metrics, the
    page), the protocol's own errors, the rate limit; and every error its Cache-Control."""
    answers: dict[str, tuple[int, dict[str, list[str]]]] = {}

    def record(name: str, response: httpx.Response) -> None:
        answers[name] = (
            response.status_code,
            {k: response.headers.get_list(k) for k in response.headers},
        )

    base = stack.base
    document = stack.get("/v1/us/current.json")
    record("hot document", document)
    record("304", stack.get("/v1/us/current.json", **{"If-None-Match": document.headers["etag"]}))
    record("query", stack.get("/v1/states/daily.json?states=ca&lastdays=2"))
    record("derived", stack.get("/v1/us/derived.csv?lastdays=2"))
    record("404 path", stack.get("/nope"))
    record("404 state", stack.get("/v1/states/zz/current.json"))
    record("422", stack.get("/v1/us/daily.json?from=nope"))
    record("405", httpx.delete(f"{base}/v1/us/current.json"))
    for path in ("/", "/docs", "/openapi.json", "/healthz", "/readyz", "/covid-stats"):
        record(path, stack.get(path))
    answers["400"] = _raw(base, b"NOT HTTP AT ALL\r\n\r\n")
    answers["414"] = _raw(base, b"GET /?q=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
    answers["431"] = _raw(base, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")

    process, limited = start_api({**stack.env, "RATE_LIMIT_PER_MINUTE": "2"}, stack.log_dir, 1)
    try:
        client = {"X-Forwarded-For": "198.51.100.7"}
        statuses = [httpx.get(f"{limited}/v1/us/current.json", headers=client) for _ in range(3)]
        record("429", statuses[-1])
    finally:
        process.stop()

    expected = {"400": 400, "414": 414, "431": 431, "429": 429, "304": 304, "405": 405, "422": 422}
    for name, (status, headers) in answers.items():
        assert status == expected.get(name, 404 if name.startswith("404") else 200), name
        assert headers.get("x-content-type-options") == ["nosniff"], name
        assert "server" not in headers, (name, headers.get("server"))
        if status >= 400:  # every error says how long it may be cached
            assert headers.get("cache-control") == [error_cache_control(status).decode()], name


# -- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run .ci/install-tools (it installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield launched
        launched.close()


# Runs in the page before its own script: records Content-Security-Policy violations.
_WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


@dataclass
class Visit:
    """A page in a fresh browser context, and everything it did."""

    page: Page
    base: str
    console: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def ready(self) -> None:
        """The first load drawn: the charts, the list of places and the status."""
        self.page.wait_for_selector("#main[aria-busy='false'] .chart svg path.line")
        self.page.wait_for_selector("#state option:nth-child(2)", state="attached")
        self.page.locator("#fetched").filter(has_not_text="…").wait_for()
        self.page.wait_for_load_state("networkidle")  # the icon too: the whole first load

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught errors, failed requests, dialogs, CSP
        violations, requests to another origin: none is expected."""
        found = [
            f"console {m.type}: {m.text}" for m in self.console if m.type in ("error", "warning")
        ]
        found += [f"page error: {e}" for e in self.page_errors]
        found += [f"request failed: {f}" for f in self.failed]
        found += [f"dialog: {d}" for d in self.dialogs]
        found += [f"CSP: {v}" for v in self.page.evaluate("() => window.__violations")]
        found += [
            f"other origin: {r.url}" for r in self.requests if not r.url.startswith(self.base)
        ]
        return found

    def from_network(self) -> list[Request]:
        """The requests answered over the network (not from the browser's cache: Chromium
        asks for the icon again after a history change, and its cache answers)."""
        return [r for r in self.requests if self.transferred([r]) > 0]

    @staticmethod
    def transferred(requests: list[Request]) -> int:
        """Bytes received for ``requests`` (headers and encoded bodies)."""
        total = 0
        for request in requests:
            sizes = request.sizes()
            total += max(0, sizes["responseHeadersSize"] + sizes["responseBodySize"])
        return total


@contextlib.contextmanager
def visit(browser: Browser, base: str, path: str, **options: Any) -> Iterator[Visit]:
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(script=_WATCH_CSP)
    page = context.new_page()
    seen = Visit(page, base)
    page.on("console", lambda message: seen.console.append(message))
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
    page.on("request", lambda request: seen.requests.append(request))
    page.on("requestfailed", lambda r: seen.failed.append(f"{r.url} {r.failure}"))

    def dialog(d: Any) -> None:
        seen.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    try:
        page.goto(f"{base}{path}")
        yield seen
    finally:
        context.close()


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def shown_series(seen: Visit) -> dict[str, list[dict[str, Any]]]:
    """The api's JSON of what the page shows, from the page's own links."""
    series = {}
    for kind in ("daily", "derived"):
        href = seen.page.get_attribute(f"#{kind}-json", "href")
        assert href is not None
        assert href.startswith("/v1/"), href
        csv_href = seen.page.get_attribute(f"#{kind}-csv", "href")
        assert csv_href == href.replace(".json?", ".csv?")
        response = httpx.get(f"{seen.base}{href}", timeout=30)
        assert response.status_code == 200, href
        series[kind] = response.json()
    return series


def assert_charts_match(seen: Visit, series: dict[str, list[dict[str, Any]]]) -> None:
    """Each chart has one bar per record with a daily value and one vertex per record with
    an average (or level), as the api returned them; the table one row per date."""
    assert series["daily"], "the view has no data"
    for chart, (bars, line) in CHARTS.items():
        figure = seen.page.locator(f"#chart-{chart}")
        if bars is not None:
            expected_bars = sum(1 for r in series[bars[0]] if _numeric(r.get(bars[1])))
            assert figure.locator("rect.bar").count() == expected_bars, chart
        expected_points = sum(1 for r in series[line[0]] if _numeric(r.get(line[1])))
        path = figure.locator("path.line").get_attribute("d") or ""
        assert len(re.findall(r"[ML]", path)) == expected_points, chart
        assert expected_points > 0, chart
    dates = {r["date"] for r in series["daily"]} | {r["date"] for r in series["derived"]}
    assert seen.page.locator("#table tbody tr").count() == len(dates)


def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    summary(f"page: screenshot {path}")
    return path


def _iso(day: int) -> str:
    return f"{day // 10000}-{day // 100 % 100:02}-{day % 100:02}"


def _view_dates(stack: Stack, state: str) -> tuple[str, str]:
    """A range of the state's data (about three months, ending a few days before its
    newest date), as YYYY-MM-DD."""
    dates = [r["date"] for r in stack.json(f"/v1/states/{state}/daily.json?fields=date")]
    return _iso(dates[min(95, len(dates) - 1)]), _iso(dates[min(3, len(dates) - 1)])


def test_the_page_draws_what_the_api_serves_and_a_state_change_redraws_it(
    stack: Stack, browser: Browser
) -> None:
    names = {r["state"]: r["name"] for r in stack.json("/v1/states/info.json?fields=state,name")}
    start, end = _view_dates(stack, "ca")
    path = f"/?state=ca&from={start}&to={end}"
    with visit(browser, stack.base, path, viewport=DESKTOP, color_scheme="light") as seen:
        seen.ready()
        page = seen.page
        assert page.locator("h1").text_content() == f"COVID-19 in {names['CA']}"
        assert page.locator("#state option").count() == len(names) + 1  # and the US
        assert page.input_value("#state") == "ca"
        assert page.input_value("#from") == start
        assert page.input_value("#to") == end
        series = shown_series(seen)
        assert_charts_match(seen, series)
        assert min(r["date"] for r in series["daily"]) == int(start.replace("-", ""))
        # The page asked exactly what it links to, and nothing from elsewhere.
        asked = {urlsplit(r.url).path + "?" + urlsplit(r.url).query for r in seen.requests}
        for kind in ("daily", "derived"):
            assert page.get_attribute(f"#{kind}-json", "href") in asked
        first_load = seen.from_network()
        first_bytes = seen.transferred(first_load)
        summary(
            f"page: first load: {len(first_load)} requests, {first_bytes:,} bytes transferred "
            f"(CA, {len(series['daily'])} days)"
        )

        # Another state: its daily and derived series and the revisions of the fields the
        # charts show (one small request each), redrawn.
        seen.requests.clear()
        with page.expect_response(lambda r: "/states/ny/derived.json" in r.url):
            page.select_option("#state", "ny")
        page.wait_for_selector("#daily-json[href*='/states/ny/']")
        page.wait_for_selector("#main[aria-busy='false']")
        assert page.locator("h1").text_content() == f"COVID-19 in {names['NY']}"
        query = parse_qs(urlsplit(page.url).query)
        assert query == {"state": ["ny"], "from": [start], "to": [end]}  # shareable
        changed = shown_series(seen)
        assert_charts_match(seen, changed)
        changed_requests = seen.from_network()
        assert sorted(urlsplit(r.url).path for r in changed_requests) == [
            "/v1/states/ny/daily.json",
            "/v1/states/ny/derived.json",
        ] + ["/v1/states/ny/revisions.json"] * len(REVISED)
        shown_dates = [r["date"] for r in changed["daily"]] + [
            r["date"] for r in changed["derived"]
        ]
        asked_revisions = set()
        for request in changed_requests:
            response = request.response()
            assert response is not None
            query = parse_qs(urlsplit(request.url).query)
            if urlsplit(request.url).path.endswith("/revisions.json"):
                # the view's dates, one field each
                assert query["from"] == [str(min(shown_dates))], request.url
                assert query["to"] == [str(max(shown_dates))], request.url
                asked_revisions.add(query["field"][0])
            else:
                assert response.headers.get("content-encoding") == "gzip", request.url
        assert asked_revisions == set(REVISED.values())
        change_bytes = seen.transferred(changed_requests)
        summary(
            f"page: state change: {len(changed_requests)} requests, {change_bytes:,} bytes "
            "transferred (NY)"
        )
        assert change_bytes < 20 * 1024

        # Back: the previous view again.
        page.go_back()
        page.wait_for_selector("#daily-json[href*='/states/ca/']")
        assert page.input_value("#state") == "ca"
        page.wait_for_selector("#main[aria-busy='false']")
        _screenshot(page, "page-desktop.png")
        assert seen.problems() == []


def _describe() -> str:
    """A JavaScript function naming an element (the same for both sides of a comparison)."""
    return (
        "(e) => e ? [e.tagName.toLowerCase(), e.id, e.getAttribute('href') || '', "
        "e.dataset.days === undefined ? '' : 'days=' + e.dataset.days, "
        "e.closest('figure') ? e.closest('figure').id : ''].join('|') : ''"
    )


def _luminance(css_color: str) -> float:
    red, green, blue = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def test_the_page_at_phone_width_in_dark_mode_by_keyboard(stack: Stack, browser: Browser) -> None:
    with visit(browser, stack.base, "/", viewport=PHONE, color_scheme="dark") as seen:
        seen.ready()
        page = seen.page
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        assert (
            _luminance(page.evaluate("() => getComputedStyle(document.body).backgroundColor")) < 0.2
        )
        assert _luminance(page.evaluate("() => getComputedStyle(document.body).color")) > 0.7
        assert_charts_match(seen, shown_series(seen))

        # Tab reaches every control, link and chart of the page.
        focusable = page.evaluate(
            "() => [...document.querySelectorAll('a[href], button, select, input, summary, "
            '[tabindex]:not([tabindex="-1"])\')].filter((e) => e.checkVisibility())'
            f".map({_describe()})"
        )
        assert len(focusable) >= 20
        reached = set()
        for _ in range(3 * len(focusable)):  # a date input is three stops (month, day, year)
            page.keyboard.press("Tab")
            reached.add(page.evaluate(f"() => ({_describe()})(document.activeElement)"))
            if reached >= set(focusable):
                break
        assert set(focusable) <= reached, set(focusable) - reached

        # A range by keyboard: "30 days" with Enter.
        page.focus(".presets button[data-days='30']")
        with page.expect_response(lambda r: "/us/derived.json" in r.url and "lastdays=30" in r.url):
            page.keyboard.press("Enter")
        page.wait_for_selector("#daily-json[href*='lastdays=30']")
        page.wait_for_selector("#main[aria-busy='false']")
        assert parse_qs(urlsplit(page.url).query) == {"days": ["30"]}
        assert page.get_attribute(".presets button[data-days='30']", "aria-pressed") == "true"
        thirty = shown_series(seen)
        assert len(thirty["daily"]) == 30
        assert_charts_match(seen, thirty)
        # A place by keyboard: the next one in the list.
        page.focus("#state")
        with page.expect_response(lambda r: "/derived.json" in r.url and "/states/" in r.url):
            page.keyboard.press("ArrowDown")
        page.wait_for_selector("#daily-json[href*='/states/']")
        # Drawn: the charts are replaced once both series are in (a key pressed before that
        # went to the chart being replaced, and Home and End read the new chart's last day).
        page.wait_for_selector("#main[aria-busy='false']")
        code = page.input_value("#state")
        assert parse_qs(urlsplit(page.url).query) == {"state": [code], "days": ["30"]}
        # A chart by keyboard: Home and End move the readout to the first and last day.
        chart = page.locator("#chart-cases svg")
        chart.focus()
        page.keyboard.press("Home")
        first = page.locator("#cases-readout").text_content() or ""
        page.keyboard.press("End")
        last = page.locator("#cases-readout").text_content() or ""
        assert first != last
        assert first.split(" · ")[0] != last.split(" · ")[0]
        # The table fallback by keyboard.
        page.focus("#table-box summary")
        page.keyboard.press("Enter")
        assert page.locator("#table th[scope='col']").count() == 10
        assert page.locator("#table caption").text_content()
        _screenshot(page, "page-phone-dark.png")
        assert seen.problems() == []


HOSTILE = '<img src=x onerror="window.__pwned=1">"><script>window.__pwned=2</script>'


def _inert(seen: Visit) -> None:
    """Nothing the hostile values held became an element or ran."""
    page = seen.page
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 1  # the page's own
    assert (
        page.evaluate(
            "() => [...document.querySelectorAll('*')].filter((e) => "
            "[...e.attributes].some((a) => a.name.startsWith('on'))).length"
        )
        == 0
    )
    hrefs = page.evaluate("() => [...document.querySelectorAll('a')].map((a) => a.href)")
    assert all(h.startswith(("http://127.0.0.1", "https://")) for h in hrefs), hrefs
    assert not [r.url for r in seen.requests if urlsplit(r.url).path in ("/x", "/javascript:")]
    assert seen.problems() == []


def test_hostile_values_in_the_url_are_inert(stack: Stack, browser: Browser) -> None:
    query = httpx.QueryParams(
        {
            "state": HOSTILE,
            "from": "javascript:alert(1)",
            "to": HOSTILE,
            "days": "<b>9</b>",
            "as_of": HOSTILE,
        }
    )
    with visit(browser, stack.base, f"/?{query}", viewport=DESKTOP) as seen:
        seen.ready()
        _inert(seen)
        notices = seen.page.locator("#notices p").all_text_contents()
        assert f"Unknown place “{HOSTILE}”: showing the United States." in notices
        assert "Ignored from=“javascript:alert(1)”: not a date (YYYY-MM-DD)." in notices
        assert f"Ignored to=“{HOSTILE}”: not a date (YYYY-MM-DD)." in notices
        assert f"Ignored as_of=“{HOSTILE}”: not an instant (YYYY-MM-DDThh:mm:ssZ)." in notices
        assert not [r.url for r in _data_requests(seen) if "as_of" in r.url]
        assert seen.page.locator("h1").text_content() == "COVID-19 in the United States"
        assert_charts_match(seen, shown_series(seen))  # the US, whole
        assert urlsplit(seen.page.url).query == ""  # the URL keeps only what is shown


def test_hostile_values_in_the_data_are_inert(stack: Stack, browser: Browser) -> None:
    """A state's name with markup, published through the real pipeline (the upstream serves
    it, the fetcher stores and publishes it, the api serves it), shows as text."""
    info = stack.upstream.get("/v1/states/info.json").json()
    victim = info[0]["state"]
    info[0]["name"] = HOSTILE
    stack.upstream.fault("/v1/states/info.json", "body", body=info)
    try:
        result = run_fetcher("refresh-once", stack.env)
        assert result.returncode == 0, result.stdout.decode()[-2000:]

        def published() -> bool:
            names = stack.json("/v1/states/info.json?fields=state,name")
            return any(r["name"] == HOSTILE for r in names)

        wait_until(published, 15, what="the hostile name served")
        with visit(browser, stack.base, f"/?state={victim.lower()}", viewport=DESKTOP) as seen:
            seen.ready()
            page = seen.page
            page.wait_for_selector(f"#daily-json[href*='/states/{victim.lower()}/']")
            _inert(seen)
            assert page.locator("h1").text_content() == f"COVID-19 in {HOSTILE}"
            option = page.locator(f"#state option[value='{victim.lower()}']")
            assert option.text_content() == f"{HOSTILE} ({victim})"
            assert page.title() == f"COVID-19 in {HOSTILE}: covid-stats"
            assert HOSTILE in (page.locator("#table caption").text_content() or "")
            assert_charts_match(seen, shown_series(seen))
    finally:
        stack.upstream.reset()
        assert run_fetcher("refresh-once", stack.env).returncode == 0


# -- as of an instant ------------------------------------------------------------------------


def _data_requests(seen: Visit) -> list[Request]:
    """The page's requests for data (the api's /v1 paths)."""
    return [r for r in seen.requests if urlsplit(r.url).path.startswith("/v1/")]


# The api's paths that refuse as_of (the status: the data held now; the revisions: a history
# already): the page never sends it there.
_NO_AS_OF = ("/v1/status.json", "/revisions.json")


def _assert_as_of(requests: list[Request], instant: str) -> None:
    """Every request for a document carries ``instant``; none to a path that refuses it."""
    for request in requests:
        carried = parse_qs(urlsplit(request.url).query).get("as_of")
        if urlsplit(request.url).path.endswith(_NO_AS_OF):
            assert carried is None, request.url
        else:
            assert carried == [instant], request.url


def _shown_instant(page: Page) -> str:
    """The "as of" input's value to the second (Chromium writes hh:mm when seconds are 0)."""
    value = page.input_value("#as-of")
    return datetime.fromisoformat(value).isoformat() if value else ""


def _second(moment: datetime) -> str:
    """An instant as the page writes it: UTC, to the second, with Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _settled(seen: Visit, selector: str) -> None:
    seen.page.wait_for_selector(selector)
    seen.page.wait_for_selector("#main[aria-busy='false']")
    seen.page.wait_for_load_state("networkidle")


def test_as_of_is_kept_in_the_url_and_carried_by_every_data_request(
    stack: Stack, browser: Browser
) -> None:
    """The "as of" control and the URL: every request for a document carries the instant
    (not the status nor the revisions, which refuse it), the links to the view's data too; a
    new instant is pushed to the URL and asked; "Latest" drops it. (What the api answers as
    of an instant: test_page_history.py.)"""
    start, end = _view_dates(stack, "ca")
    # Instants the api served data at (after its first publish, not in the future): the
    # first publish's time from the changes feed, rounded up to a second, then a later one.
    # The api dates the records' versions by when their snapshot became current, set just
    # after the feed's entry (docs/pipeline.md): the first whole second it answers as of.
    published = stack.json("/v1/changes.json?since=2000-01-01T00:00:00Z")["changes"][0]
    first = datetime.fromisoformat(published["published_at"].replace("Z", "+00:00"))
    moment = first.replace(microsecond=0) + timedelta(seconds=1)
    while stack.get(f"/v1/us/current.json?as_of={_second(moment)}").status_code != 200:
        assert moment < datetime.now(UTC), "the api answers as of no instant since the publish"
        moment += timedelta(seconds=1)
    instant = _second(moment)
    wait_until(lambda: _second(datetime.now(UTC)) > instant, 5, interval=0.05, what="a second")
    wall = instant.removesuffix("Z")  # the input's value: UTC, to the second
    path = f"/?state=ca&from={start}&to={end}&as_of={instant}"
    with visit(browser, stack.base, path, viewport=DESKTOP) as seen:
        seen.ready()
        page = seen.page
        _settled(seen, "#daily-json[href*='as_of=']")
        assert _shown_instant(page) == wall
        asked = _data_requests(seen)
        kinds = {urlsplit(r.url).path.rsplit("/", 1)[-1] for r in asked}
        assert {"status.json", "info.json", "daily.json", "derived.json", "revisions.json"} <= kinds
        _assert_as_of(asked, instant)
        for link in ("daily-json", "daily-csv", "derived-json", "derived-csv"):
            href = page.get_attribute(f"#{link}", "href") or ""
            assert parse_qs(urlsplit(href).query)["as_of"] == [instant], link
        assert_charts_match(seen, shown_series(seen))
        assert f"As published at {wall.replace('T', ' ')} UTC." in (
            page.locator("#lede").text_content() or ""
        )

        # Another instant from the control: pushed to the URL, asked by every request.
        seen.requests.clear()
        later = _second(datetime.now(UTC))
        with page.expect_response(
            lambda r: "/derived.json" in r.url and f"as_of={quote(later, safe='')}" in r.url
        ):
            page.fill("#as-of", later.removesuffix("Z"))  # input and change events
        _settled(seen, f"#daily-json[href*='as_of={quote(later, safe='')}']")
        assert parse_qs(urlsplit(page.url).query) == {
            "state": ["ca"],
            "from": [start],
            "to": [end],
            "as_of": [later],
        }
        asked = _data_requests(seen)
        assert {urlsplit(r.url).path.rsplit("/", 1)[-1] for r in asked} == {
            "daily.json",
            "derived.json",
            "revisions.json",
        }
        _assert_as_of(asked, later)

        # Back: the first instant again, from the URL.
        page.go_back()
        _settled(seen, f"#daily-json[href*='as_of={quote(instant, safe='')}']")
        assert _shown_instant(page) == wall

        # "Latest": no instant in the URL nor in any request.
        seen.requests.clear()
        page.click("#as-of-latest")
        _settled(seen, "#daily-json:not([href*='as_of'])")
        assert parse_qs(urlsplit(page.url).query) == {"state": ["ca"], "from": [start], "to": [end]}
        assert page.input_value("#as-of") == ""
        asked = _data_requests(seen)
        assert asked
        assert not [r.url for r in asked if "as_of" in r.url]
        assert seen.problems() == []

    # An instant with another offset is kept as given (the api takes it); a time without an
    # offset names no instant and is ignored, with a notice.
    plus_one = (
        datetime.fromisoformat(wall).replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=1)))
    )
    for given, kept in ((plus_one.isoformat(), True), (wall, False)):
        query = httpx.QueryParams({"as_of": given})
        with visit(browser, stack.base, f"/?{query}", viewport=DESKTOP) as seen:
            seen.ready()
            asked = _data_requests(seen)
            if kept:
                _assert_as_of(asked, given)
            else:
                assert not [r.url for r in asked if "as_of" in r.url]
            notices = seen.page.locator("#notices p").all_text_contents()
            ignored = f"Ignored as_of=“{given}”: not an instant (YYYY-MM-DDThh:mm:ssZ)."
            assert (ignored in notices) is not kept
            if kept:
                assert _shown_instant(seen.page) == wall
            assert seen.problems() == []
