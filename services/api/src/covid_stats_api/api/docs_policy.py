"""A Content-Security-Policy for the interactive documentation: ``/docs`` (Swagger UI),
``/redoc`` (ReDoc) and Swagger UI's OAuth2 redirect page, as ``fastapi-offline`` serves them
(their scripts and styles from this origin, one inline script or style each).

Each page's policy allows scripts and styles from this origin plus, by their SHA-256
hashes, exactly the inline ``<script>`` and ``<style>`` elements of the page as it is sent
(computed from its bytes, so a fastapi upgrade that changes them stays covered), nothing
from elsewhere, and no framing (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for
browsers without CSP 2). tests/api/test_docs_policy.py checks in Chromium that both viewers
still render and run with it, and that a page of another origin cannot frame them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from html.parser import HTMLParser

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What the viewers need besides their inline elements: Swagger UI's stylesheet draws its icons
# from data: URLs; ReDoc searches in a Web Worker it starts from a blob: URL, and its
# styled-components inject <style> elements at run time, which no hash can name: on the pages
# named ``inline_styles`` (ReDoc's) style-src has 'unsafe-inline' (styles run no code; images
# and requests stay limited to this origin), on the others the inline <style>s' hashes.
_FIXED = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "worker-src": ["'self'", "blob:"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


class _Inline(HTMLParser):
    """The text of each inline ``<script>`` (one without ``src``) and ``<style>`` of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.found: dict[str, list[str]] = {"script": [], "style": []}
        self._tag: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "style" or (tag == "script" and not any(name == "src" for name, _ in attrs)):
            self._tag, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._tag is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._tag:
            self.found[tag].append("".join(self._text))
            self._tag = None


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy(page: bytes, inline_styles: bool = False) -> str:
    """The policy of ``page`` (HTML, UTF-8): its inline scripts allowed by hash, its inline
    styles by hash too, or any inline style when ``inline_styles``."""
    parser = _Inline()
    parser.feed(page.decode())
    parser.close()
    directives = {name: list(sources) for name, sources in _FIXED.items()}
    directives["script-src"] += [_hash(script) for script in parser.found["script"]]
    if inline_styles:
        directives["style-src"].append("'unsafe-inline'")
    else:
        directives["style-src"] += [_hash(style) for style in parser.found["style"]]
    return "; ".join(" ".join([name, *sources]) for name, sources in directives.items())


class DocsPolicy:
    """ASGI middleware: the answers to ``paths`` (the documentation pages) get their
    Content-Security-Policy (any inline style allowed on ``inline_styles``); every other
    request passes untouched."""

    def __init__(
        self, app: ASGIApp, paths: Iterable[str], inline_styles: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.inline_styles = frozenset(inline_styles)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = b"".join(body)
            headers = list(start.get("headers", []))
            if start["status"] == 200:
                policy = content_security_policy(page, scope["path"] in self.inline_styles)
                headers += [
                    (b"content-security-policy", policy.encode()),
                    (b"x-frame-options", b"DENY"),
                ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, buffered)
