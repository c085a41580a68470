"""Headers the server adds to every answer of the api.

Given to uvicorn as its default headers by the worker class (``http_limits.UvicornWorker``),
so every answer carries them whoever wrote it: the fast path, FastAPI (documents, queries,
errors, the docs, the page), the rate limit's 429 and the protocol's own 400/408/414/431.
uvicorn's ``server: uvicorn`` banner is turned off there too: the server names no software
or version.
"""

from __future__ import annotations

SERVER_HEADERS: tuple[tuple[str, str], ...] = (
    # Browsers take every body for the Content-Type it is sent with, never a guess: a JSON
    # or CSV answer holding markup is never run as a page.
    ("X-Content-Type-Options", "nosniff"),
)
