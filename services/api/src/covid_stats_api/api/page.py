"""The page for people at ``/``: the data as charts, drawn in the browser from the api's own
JSON, with nothing loaded from anywhere but this origin.

Four files in ``static/``: ``index.html``, ``page.js`` (vanilla JavaScript drawing SVG, no
library), ``page.css`` and ``favicon.svg``. They are read once when the app is built and
held in memory like hot documents (``hot.HotEntry``: body, gzip and Brotli bodies, strong
ETags, prebuilt headers), and the fast path serves them without FastAPI or Redis, 304 on
``If-None-Match`` included. The assets are served under names that carry a digest of their bytes
(``/assets/page.<digest>.js``) and may be cached for a year; the page itself names them,
and is revalidated on each visit (``no-cache``: a 304 from memory), so a new release is
seen at once.

The page's markup gets the api's URLs from the router (``url_path_for`` of the routes'
names), so a path is defined once, in ``api/routes``. Every static answer carries a strict
Content-Security-Policy (``CONTENT_SECURITY_POLICY``): scripts, styles, images and requests
from this origin only, no inline script or style, no plugin, no framing.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import PurePosixPath

from starlette.responses import Response

from covid_stats_api.reads.hot import HotEntry
from covid_stats_contract.documents import compress, compress_br, etag_for
from covid_stats_runtime.http import RepresentationResponse, static_headers

PAGE_PATH = "/"
ASSETS_PATH = "/assets/"
_PAGE_FILE = "index.html"
_ASSET_FILES = ("page.js", "page.css", "favicon.svg")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page is revalidated at each visit; an asset's URL changes with its bytes.
_PAGE_CACHE_CONTROL = "no-cache"
_ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"


def static_entry(body: bytes, content_type: str, cache_control: str) -> HotEntry:
    """An in-memory answer for fixed bytes: identity, gzip and Brotli bodies, ETag, headers."""
    etag = etag_for(body)
    gzip, br = compress(body), compress_br(body)
    common = static_headers(
        cache_control, (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())
    )
    return HotEntry.build(
        body, gzip, br, etag, content_type, common, source="page", version="", expires=float("inf")
    )


def asset_url(name: str, body: bytes) -> str:
    """``page.js`` -> ``/assets/page.<12 hex digits of its SHA-256>.js``."""
    path = PurePosixPath(name)
    digest = hashlib.sha256(body).hexdigest()[:12]
    return f"{ASSETS_PATH}{path.stem}.{digest}{path.suffix}"


def load(url_for: Callable[..., str], docs_url: str) -> dict[str, HotEntry]:
    """The page and its assets by path, ready to serve. ``url_for(name, **params)`` is the
    app's ``url_path_for``: the page's links to the api come from its routes."""
    folder = resources.files("covid_stats_api") / "static"
    entries: dict[str, HotEntry] = {}
    names: dict[str, str] = {}
    for name in _ASSET_FILES:
        body = (folder / name).read_bytes()
        url = asset_url(name, body)
        names[name] = url
        suffix = PurePosixPath(name).suffix
        entries[url] = static_entry(body, _CONTENT_TYPES[suffix], _ASSET_CACHE_CONTROL)
    urls = {**api_urls(url_for), "docs": docs_url}
    names["page"] = PAGE_PATH
    page = render_page((folder / _PAGE_FILE).read_text(), names, urls)
    entries[PAGE_PATH] = static_entry(page.encode(), _CONTENT_TYPES[".html"], _PAGE_CACHE_CONTROL)
    return entries


def api_urls(url_for: Callable[..., str]) -> dict[str, str]:
    """The api paths the page's script asks, as templates (``{state}``, ``{fmt}``)."""
    state, fmt = "{state}", "{fmt}"
    return {
        "status": url_for("status"),
        "states": url_for("states_info", fmt="json"),
        "us-daily": url_for("us_daily", fmt=fmt),
        "us-derived": url_for("us_derived", fmt=fmt),
        "state-daily": url_for("state_daily", state=state, fmt=fmt),
        "state-derived": url_for("state_derived", state=state, fmt=fmt),
        "us-revisions": url_for("us_revisions", fmt="json"),
        "state-revisions": url_for("state_revisions", state=state, fmt="json"),
    }


def render_page(template: str, assets: Mapping[str, str], urls: Mapping[str, str]) -> str:
    """``index.html`` with its ``{{name}}`` placeholders replaced by the URLs of the assets
    and the api of those names, and ``{{api-urls}}`` by ``data-*`` attributes holding all
    the api's URL templates (for the script)."""
    page = template
    for name, url in {**assets, **urls}.items():
        page = page.replace("{{" + name + "}}", html.escape(url))
    attributes = " ".join(f'data-{key}="{html.escape(url)}"' for key, url in urls.items())
    page = page.replace("{{api-urls}}", attributes)
    if "{{" in page:
        raise ValueError(f"{_PAGE_FILE}: a placeholder is left: {page[page.index('{{') :][:40]}")
    return page


def endpoint(entry: HotEntry) -> Callable[[], Awaitable[Response]]:
    async def serve() -> Response:
        return RepresentationResponse(entry)

    return serve
