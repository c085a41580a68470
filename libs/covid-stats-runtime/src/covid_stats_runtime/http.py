"""HTTP answers, built in one place for both services: the error body, entity tags and
conditional requests, the headers of a data answer, and the headers on every answer.

- **Errors.** Every error either service sends has one body,
  ``{"error": {"status": <int>, "code": <str>, "message": <str>}}`` plus ``"parameter"``
  when one request parameter is at fault (:class:`ErrorBody`, rendered by
  :func:`error_body`): the api's handlers, its protocol-level refusals
  (400/408/414/431/501), its rate limit's 429, its metrics listener's 404 and the fetcher's
  port all call it. Every error says how long a cache may keep it
  (:func:`error_cache_control`, in :func:`error_headers` and
  :func:`starlette_error_response`).
- **Representations.** A body is sent as a :class:`Representation`: the identity body, the
  gzip and Brotli bodies compressed once by the fetcher, a strong ETag per representation
  (:func:`gzip_etag`, :func:`br_etag`) and the header lists (identity, gzip, Brotli, 304)
  built once. :meth:`Representation.choose` answers a request's ``Accept-Encoding``
  (:func:`accepted_encodings`: q-values honoured, Brotli preferred at equal weight; several
  lines are one list) and ``If-None-Match`` (304 when it names the tag of the
  representation the 200 would send, with that tag, as RFC 9110 wants, so a cache freshens
  the right stored variant) and :func:`send_representation` sends it; the api's fast path (from
  memory) and its FastAPI routes (:class:`RepresentationResponse`) both do exactly this,
  which is why they answer the same request with the same status, headers and bytes.
- **Data answers** carry :func:`data_headers`: caching (:class:`CachePolicy`: the
  browsers' ``Cache-Control``, an edge's ``Surrogate-Control``; ``Surrogate-Key``), where
  the body came from (``X-Data-Source``), CORS (open to every origin, whether or not the
  request names one: :class:`CORSMiddleware` leaves them as they are) and ``Vary``; fixed
  bytes (the page) :func:`static_headers`.
- **Every answer** carries ``SERVER_HEADERS`` (the servers' default headers).
"""

from __future__ import annotations

import http
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel
from starlette.datastructures import Headers as StarletteHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import cors
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from covid_stats_contract.documents import JSON_CONTENT_TYPE
from covid_stats_contract.edge import SURROGATE_CONTROL_HEADER, SURROGATE_KEY_HEADER

Headers = list[tuple[bytes, bytes]]

DATA_SOURCE_HEADER = "X-Data-Source"  # "cache" (Redis) or "database" (PostgreSQL)
# The headers of a data answer a page on another origin may read (CORS).
EXPOSED_HEADERS: tuple[str, ...] = ("ETag", DATA_SOURCE_HEADER)

SERVER_HEADERS: tuple[tuple[str, str], ...] = (
    # Browsers take every body for the Content-Type it is sent with, never a guess: a JSON
    # or CSV answer holding markup is never run as a page.
    ("X-Content-Type-Options", "nosniff"),
)


# -- errors ------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    parameter: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(status: int, code: str, message: str, parameter: str | None = None) -> bytes:
    """The error body: compact JSON, ``parameter`` only when one is at fault."""
    detail = ErrorDetail(status=status, code=code, message=message, parameter=parameter)
    return ErrorBody(error=detail).model_dump_json(exclude_none=True).encode()


# How long a cache may keep an error (RFC 9111). An error that depends on the URL alone
# (what a cache keys its entries by), the same for every client until the data changes, may
# be kept as long as a data answer by default (``CACHE_MAX_AGE_SECONDS``: 60): an unknown
# path, state or date (404), a wrong method (405), a malformed parameter (422). Every other
# error depends on the request's headers or bytes (the protocol's 400, 414, 431, 501), the
# connection (408), the moment or the load (429, 503, 500): never kept, else one client's
# refusal would be served to the next asking the same URL.
ERROR_MAX_AGE_SECONDS = 60
_URL_ERRORS = frozenset({404, 405, 422})
_KEPT_ERROR = f"public, max-age={ERROR_MAX_AGE_SECONDS}".encode()
_UNKEPT_ERROR = b"no-store"


def error_cache_control(status: int) -> bytes:
    """The ``Cache-Control`` of an error answer with this status."""
    return _KEPT_ERROR if status in _URL_ERRORS else _UNKEPT_ERROR


def error_headers(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> Headers:
    """The headers of an error answer of ``status`` carrying ``body``, then ``extra``."""
    return [
        (b"content-type", JSON_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", error_cache_control(status)),
        *extra,
    ]


def starlette_error_response(
    status: int,
    code: str,
    message: str,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error as a Starlette response (FastAPI's handlers, the fetcher's port), with
    its ``Cache-Control`` (:func:`error_cache_control`) and ``headers``."""
    response = Response(
        error_body(status, code, message, parameter),
        status_code=status,
        headers=headers,
        media_type=JSON_CONTENT_TYPE,
    )
    if "cache-control" not in response.headers:
        response.headers["cache-control"] = error_cache_control(status).decode()
    return response


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error_response(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (no such path, a wrong method) in the error shape: the
    exception handler of both services."""
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"No such path: {request.url.path}"
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return starlette_error_response(exc.status_code, code, message, headers=exc.headers)


# -- the bytes of an answer written by the protocol itself ----------------------------

# The header that ends a connection after its answer.
CONNECTION_CLOSE = (b"connection", b"close")


def _status_line(status: int) -> bytes:
    """uvicorn's status line: ``HTTP/1.1``, the code, its phrase (none when unknown)."""
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def http_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A status line and headers as uvicorn writes them (names in lower case), with the
    blank line that ends them: for the answers the server writes itself."""
    lines = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers)
    return _STATUS_LINES[status] + lines + b"\r\n"


def closing_error_answer(
    status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """The bytes of a complete HTTP/1.1 answer in the error shape (JSON, CORS,
    Cache-Control) that closes the connection: the protocol's own refusals
    (400, 408, 414, 431, 501: ``covid_stats_runtime.protocol``)."""
    body = error_body(status, code, message)
    extra = error_headers(status, body, (b"access-control-allow-origin", b"*"), CONNECTION_CLOSE)
    return http_head(status, [*default_headers, *extra]) + body


# -- entity tags -------------------------------------------------------------------------


def gzip_etag(etag: str) -> str:
    """The gzip representation's own strong tag (HTTP wants one per representation)."""
    return etag[:-1] + '-gzip"'


def br_etag(etag: str) -> str:
    """The Brotli representation's own strong tag."""
    return etag[:-1] + '-br"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (the tag of the representation a
    200 would send: the weak comparison of RFC 9110 §13.1.2); ``*`` and weak tags (``W/``)
    are understood."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


# -- content negotiation -----------------------------------------------------------------

BR, GZIP = "br", "gzip"
_PREFERENCES: dict[bytes, tuple[str, ...]] = {}  # Accept-Encoding value -> its choice
_PREFERENCES_MAX = 1024  # distinct values remembered (clients send few)


def accepted_encodings(accept_encoding: bytes) -> tuple[str, ...]:
    """The codings we have (``br``, ``gzip``) that an ``Accept-Encoding`` value accepts,
    the client's preferred first: by ``q`` (absent: 1; 0: refused; ``*`` stands for the
    codings it does not name), Brotli first when equal (the smaller body). Remembered per
    distinct value: the fast path pays a dict lookup."""
    found = _PREFERENCES.get(accept_encoding)
    if found is not None:
        return found
    weights: dict[str, float] = {}
    for item in accept_encoding.decode("latin-1").lower().split(","):
        coding, _, params = item.partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights.setdefault(coding.strip(), weight)
    default = weights.get("*", 0.0)
    ranked = sorted(
        (coding for coding in (BR, GZIP) if weights.get(coding, default) > 0),
        key=lambda coding: -weights.get(coding, default),
    )  # stable: br before gzip at equal weight
    choice = tuple(ranked)
    if len(_PREFERENCES) < _PREFERENCES_MAX:
        _PREFERENCES[accept_encoding] = choice
    return choice


# -- representations ---------------------------------------------------------------------


# CORS headers of an answer that is the same for every origin (data answers carry them
# whether or not the request names an origin, so no cache needs to vary on ``Origin``).
_OPEN_TO_EVERY_ORIGIN: Headers = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long caches keep a data answer: browsers ``max_age`` seconds (then, while they
    revalidate, ``stale_while_revalidate`` more; while the origin fails,
    ``stale_if_error`` more), an edge cache ``surrogate_max_age`` (``Surrogate-Control``,
    which edges read and browsers ignore: the edge keeps the answer until a publish purges
    its ``Surrogate-Key``, see ``covid_stats_contract.edge``)."""

    max_age: int
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    surrogate_max_age: int = 0

    @property
    def cache_control(self) -> bytes:
        value = f"public, max-age={self.max_age}"
        if self.stale_while_revalidate:
            value += f", stale-while-revalidate={self.stale_while_revalidate}"
        if self.stale_if_error:
            value += f", stale-if-error={self.stale_if_error}"
        return value.encode()

    @property
    def surrogate_control(self) -> bytes:
        return f"max-age={self.surrogate_max_age}".encode()


_SURROGATE_CONTROL = SURROGATE_CONTROL_HEADER.lower().encode()
_SURROGATE_KEY = SURROGATE_KEY_HEADER.lower().encode()


def data_headers(policy: CachePolicy, source: str, keys: Iterable[str]) -> Headers:
    """The headers every data answer (a document or a query's answer) carries after its
    own, its 200s and 304s alike: caching (browsers and edge), its surrogate ``keys``
    (``covid_stats_contract.edge``), where it came from, CORS, ``Vary``. Built once per
    hot document, when it is kept in memory."""
    return [
        (b"cache-control", policy.cache_control),
        (_SURROGATE_CONTROL, policy.surrogate_control),
        (_SURROGATE_KEY, " ".join(keys).encode()),
        (DATA_SOURCE_HEADER.lower().encode(), source.encode()),
        *_OPEN_TO_EVERY_ORIGIN,
        (b"vary", b"Accept-Encoding"),
    ]


class CORSMiddleware(cors.CORSMiddleware):
    """Starlette's CORS middleware (preflights, and the CORS headers of answers that lack
    them), except that an answer already open to every origin (``data_headers``: the same
    for every origin) is sent as it is: Starlette would add ``Vary: Origin`` to it, which the
    fast path, answering without this middleware, does not send."""

    def preflight_response(self, request_headers: StarletteHeaders) -> Response:
        """Starlette's answer to a preflight, except a refused one (Starlette's plain-text
        400) is in the error shape, with its ``Cache-Control``."""
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        message = bytes(response.body).decode()  # "Disallowed CORS method", ...
        return starlette_error_response(
            response.status_code, "cors_preflight_refused", message, headers=kept
        )

    async def send(self, message: Message, send: Send, request_headers: StarletteHeaders) -> None:
        if message["type"] == "http.response.start" and all(
            header in message.get("headers", ()) for header in _OPEN_TO_EVERY_ORIGIN
        ):
            await send(message)
            return
        await super().send(message, send, request_headers)


def static_headers(cache_control: str, *extra: tuple[bytes, bytes]) -> Headers:
    """The headers fixed bytes (the api's page and its assets) carry after their own."""
    return [(b"cache-control", cache_control.encode()), *extra, (b"vary", b"Accept-Encoding")]


@dataclass(slots=True)
class Representation:
    """A body ready to send: the identity body and its gzip and Brotli forms (empty: none),
    the ETag, and the header lists of a 200 and a 304 of each representation (a 304 carries
    the tag of the representation the 200 would send). Build with :meth:`build`."""

    body: bytes
    gzip: bytes
    br: bytes
    etag: str
    headers: Headers  # for the identity body
    gzip_headers: Headers  # for the gzip body
    br_headers: Headers  # for the Brotli body
    not_modified_headers: Headers  # a 304 in place of the identity body
    gzip_not_modified_headers: Headers  # ... of the gzip body
    br_not_modified_headers: Headers  # ... of the Brotli body

    @classmethod
    def build(
        cls,
        body: bytes,
        gzip: bytes,
        br: bytes,
        etag: str,
        content_type: str,
        common: Iterable[tuple[bytes, bytes]],
        **fields: Any,
    ) -> Self:
        """The representation with its identity, gzip, Brotli and 304 header lists, each with
        ``common`` after its own; ``fields``: a subclass's own (the hot tier's entries)."""
        kind = (b"content-type", content_type.encode())
        shared = list(common)

        def encoded(coding: bytes, data: bytes, tag: str) -> Headers:
            return [
                kind,
                (b"content-length", str(len(data)).encode()),
                (b"content-encoding", coding),
                (b"etag", tag.encode()),
                *shared,
            ]

        def not_modified(tag: str) -> Headers:
            return [(b"etag", tag.encode()), *shared]

        return cls(
            body,
            gzip,
            br,
            etag,
            [kind, (b"content-length", str(len(body)).encode()), (b"etag", etag.encode()), *shared],
            encoded(b"gzip", gzip, gzip_etag(etag)),
            encoded(b"br", br, br_etag(etag)),
            not_modified(etag),
            not_modified(gzip_etag(etag)),
            not_modified(br_etag(etag)),
            **fields,
        )

    def choose(self, request_headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, Headers, bytes]:
        """The answer to a GET with these (ASGI, lower-case) request headers: the
        representation the client prefers among those it accepts and this one has
        (``accepted_encodings``; several ``Accept-Encoding`` lines are one list), else
        identity; a 304 instead, carrying that representation's tag, when ``If-None-Match``
        (its lines together) names that tag (RFC 9110 §13.1.2, §15.4.5: a tag of another
        representation is not a match: the client holds other bytes than it would get)."""
        accept: bytes | None = None
        condition: bytes | None = None
        for key, value in request_headers:
            if key == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
            elif key == b"if-none-match":
                condition = value if condition is None else condition + b"," + value
        if accept is not None:
            for coding in accepted_encodings(accept):
                if coding == BR and self.br:
                    if condition is not None and etag_matches(
                        condition.decode("latin-1"), br_etag(self.etag)
                    ):
                        return 304, self.br_not_modified_headers, b""
                    return 200, self.br_headers, self.br
                if coding == GZIP and self.gzip:
                    if condition is not None and etag_matches(
                        condition.decode("latin-1"), gzip_etag(self.etag)
                    ):
                        return 304, self.gzip_not_modified_headers, b""
                    return 200, self.gzip_headers, self.gzip
        if condition is not None and etag_matches(condition.decode("latin-1"), self.etag):
            return 304, self.not_modified_headers, b""
        return 200, self.headers, self.body


async def send_representation(scope: Scope, send: Send, representation: Representation) -> None:
    """Answer a GET or HEAD (no body) with ``representation``."""
    status, headers, body = representation.choose(scope["headers"])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class RepresentationResponse(Response):
    """A Starlette/FastAPI response that sends a representation exactly as
    :func:`send_representation` does (same status, headers and bytes)."""

    def __init__(self, representation: Representation) -> None:
        super().__init__()
        self.representation = representation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_representation(scope, send, self.representation)
