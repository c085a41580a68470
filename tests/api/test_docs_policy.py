"""The documentation pages (``/docs``, ``/redoc``, Swagger UI's OAuth2 redirect page) under
their Content-Security-Policy (``covid_stats_api.api.docs_policy``), over HTTP and in Debian's
Chromium driven by Playwright (as tests/api/test_page.py drives the page): both viewers render
the api's OpenAPI document and run with the policy, with no violation, and a page of another
origin cannot frame them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser

from covid_stats_api.main import DOCS_URL, REDOC_URL, create_app
from support import ApiUrl, Process, start_api
from test_page import browser, csp_directives, visit

__all__ = ["browser"]  # the module's fixture, shared with test_page

OAUTH2_REDIRECT = create_app().swagger_ui_oauth2_redirect_url
PAGES = [DOCS_URL, REDOC_URL, OAUTH2_REDIRECT]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiUrl]:
    """The api under gunicorn; no store is needed for the documentation (its readiness
    fails, its pages and its OpenAPI document are served)."""
    from support import clean_env

    env = clean_env(REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    process: Process
    process, base = start_api(env, tmp_path_factory.mktemp("docs"))
    yield base
    process.stop()


def _inline_scripts(html: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)


@pytest.mark.parametrize("path", PAGES)
def test_each_page_allows_exactly_its_inline_scripts_and_no_framing(api: ApiUrl, path: str) -> None:
    answer = httpx.get(f"{api}{path}")
    assert answer.status_code == 200
    directives = csp_directives(answer.headers["content-security-policy"])
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]
    assert answer.headers["x-frame-options"] == "DENY"
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _inline_scripts(answer.text)
    }
    allowed = set(directives["script-src"])
    assert hashes <= allowed
    assert allowed - hashes == {"'self'"}  # nothing else: no 'unsafe-inline', no other host
    # Other answers are left as they were.
    assert "content-security-policy" not in httpx.get(f"{api}/openapi.json").headers


def test_swagger_ui_renders_and_runs_under_its_policy(api: ApiUrl, browser: Browser) -> None:
    with visit(browser, api, DOCS_URL) as seen:
        seen.page.wait_for_selector(".swagger-ui .opblock-tag")  # drawn from /openapi.json
        seen.page.locator(".opblock-summary").first.click()  # and it runs: an operation opens
        seen.page.wait_for_selector(".opblock-body")
        seen.page.wait_for_load_state("networkidle")
        assert seen.problems() == []


# ReDoc's footer link shows Redocly's logo from their CDN: the policy blocks it (nothing is
# loaded from another origin), the only violation expected (and its failed request).
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_redoc_renders_and_runs_under_its_policy(api: ApiUrl, browser: Browser) -> None:
    with visit(browser, api, REDOC_URL) as seen:
        seen.page.wait_for_selector("[role=menuitem]")  # its menu, from /openapi.json
        seen.page.locator("[role=menuitem]").first.click()  # and it runs: a section opens
        seen.page.wait_for_selector("h2")
        seen.page.wait_for_load_state("networkidle")
        worker = f"other origin: blob:{api}/"  # its search worker, of this origin
        problems = [p for p in seen.problems() if REDOC_LOGO not in p]
        assert [p for p in problems if not p.startswith(worker)] == []


@pytest.fixture(scope="module")
def framer() -> Iterator[str]:
    """Another origin (another port): a real server answering any ``/?src=URL`` with a page
    that frames ``URL``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            src = html.escape(parse_qs(urlsplit(self.path).query)["src"][0])
            body = f'<!doctype html><iframe id="f" src="{src}"></iframe>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _framed(browser: Browser, framer: str, url: str) -> str:
    """The URL the frame ends on when a page of the framer's origin frames ``url``."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{framer}/?{urlencode({'src': url})}")
        page.wait_for_load_state("networkidle")
        (framed,) = page.main_frame.child_frames
        return framed.url
    finally:
        context.close()


@pytest.mark.parametrize("path", PAGES)
def test_a_page_of_another_origin_cannot_frame_them(
    api: ApiUrl, browser: Browser, framer: str, path: str
) -> None:
    """Chromium refuses to show the page in the frame (its error page instead), while the
    same framer shows an answer without the policy (the OpenAPI document)."""
    assert _framed(browser, framer, f"{api}/openapi.json") == f"{api}/openapi.json"
    assert _framed(browser, framer, f"{api}{path}").startswith("chrome-error://")
