"""HTTP semantics the security review found loose (issue 23: items 2, 5, 6, 7 and the
protocol's part of 10), against the real api (gunicorn, 2 uvicorn workers), over raw
sockets where a client library would not send the request as it stands.

- a 304 carries the ETag of the representation the 200 would send (gzip, Brotli or
  identity), on every path that answers: the protocol's direct answers, the fast path in
  the ASGI layers, FastAPI's route and a query answer; several ``Accept-Encoding`` lines
  are one list;
- a path with a trailing slash answers 404, never a redirect built from ``Host``;
- methods outside the api's own are counted as ``other``;
- every error says how long it may be cached;
- a ``Transfer-Encoding`` other than ``chunked`` is refused, and ``%2F`` does not separate
  path segments.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.routing import APIRoute

from covid_stats_api.main import ROUTES
from covid_stats_api.metrics import LABELLED_METHODS, OTHER_METHOD
from covid_stats_api.serving.asgi.fastpath import routed_path
from covid_stats_runtime.http import br_etag, error_cache_control, gzip_etag
from stacks import Template, cloned_env
from support import (
    ApiUrl,
    Process,
    Upstream,
    check_error_body,
    metric_samples,
    start_api,
)

REQUEST_TIMEOUT = 2.0  # HTTP_REQUEST_TIMEOUT_SECONDS of the api under test (for the 408)
DOCUMENT = "/v1/us/current.json"  # a hot document: gzip and Brotli bodies
STATE_DOCUMENT = "/v1/states/ca/current.json"
QUERY = "/v1/states/daily.json?states=ca,ny&lastdays=5"  # a query answer: gzip only
# A request the protocol leaves to the ASGI layers (it answers only requests without a body).
VIA_ASGI = ("Content-Length", "0")


@dataclass
class Api:
    process: Process
    base: ApiUrl
    port: int


@pytest.fixture(scope="module")
def api(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    """One api over the session's published data (a clone: tests/stacks.py) for the module."""
    with cloned_env(
        template,
        redis_server_url,
        upstream_server,
        HTTP_REQUEST_TIMEOUT_SECONDS=str(REQUEST_TIMEOUT),
    ) as env:
        process, base = start_api(env, tmp_path_factory.mktemp("hardening"))
        yield Api(process, base, int(base.rsplit(":", 1)[1]))
        assert "Traceback" not in process.output()
        process.stop()


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]  # names in lower case, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection, read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may refuse before all is sent
            sock.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Answer(int(status_line.split()[1]), headers, body)


def request(
    api: Api,
    method: str,
    target: str,
    *headers: tuple[str, str],
    tail: bytes = b"",
    host: str = "127.0.0.1",
) -> Answer:
    """One request as written (header lines in order, repeats kept), then ``tail``; the
    connection closes after the answer."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return _parse(_raw(api.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + tail))


def _without_date(answer: Answer) -> list[tuple[str, str]]:
    return [(name, value) for name, value in answer.headers if name != "date"]


def error(answer: Answer, status: int, code: str) -> None:
    """An error answer: the shape, and how long it may be cached."""
    assert answer.status == status, answer
    assert answer.header("content-type") == "application/json"
    check_error_body(answer.body, status, code)
    assert answer.header("cache-control") == error_cache_control(status).decode(), answer


# -- item 2: a 304 carries the tag of the representation the 200 would send --------------


def _ways(path: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every way the api answers ``path``: a hot document (no query string) by the
    protocol's direct answer, by the fast path in the ASGI layers (a request with a
    ``Content-Length``) and by FastAPI's route (a query string the route ignores); a query
    answer by its route."""
    if "?" in path:
        return [(path, ())]
    return [(path, ()), (path, (VIA_ASGI,)), (path + "?ignored=1", ())]


@pytest.mark.parametrize("path", [DOCUMENT, STATE_DOCUMENT, QUERY])
def test_a_304_carries_the_tag_the_200_would_send(api: Api, path: str) -> None:
    for target, extra in _ways(path):
        identity = request(api, "GET", target, ("Accept-Encoding", "identity"), *extra)
        assert identity.status == 200, (target, identity)
        base = identity.header("etag")
        assert base is not None
        tag_of = {None: base, "gzip": gzip_etag(base), "br": br_etag(base)}  # by coding
        for accept in ("identity", "gzip", "br", "gzip, deflate, br", "br;q=0.5, gzip"):
            ok = request(api, "GET", target, ("Accept-Encoding", accept), *extra)
            assert ok.status == 200, (target, accept, ok)
            tag = ok.header("etag")
            assert tag is not None
            assert tag == tag_of[ok.header("content-encoding")], (target, accept)
            # The 200's tag back: a 304 with exactly that tag, and the 200's other
            # headers that describe the answer (not its body's).
            for condition in (tag, f"W/{tag}", f'"other", {tag}'):
                again = request(
                    api,
                    "GET",
                    target,
                    ("Accept-Encoding", accept),
                    ("If-None-Match", condition),
                    *extra,
                )
                assert again.status == 304, (target, accept, condition, again)
                assert again.body == b""
                assert again.header("etag") == tag, (target, accept, condition)
                for name in ("cache-control", "vary", "x-data-source"):
                    assert again.header(name) == ok.header(name), (target, name)
            # The tag of another representation is no match: the client holds other bytes
            # than the ones it would be sent now.
            for other in sorted(set(tag_of.values()) - {tag}):
                fresh = request(
                    api,
                    "GET",
                    target,
                    ("Accept-Encoding", accept),
                    ("If-None-Match", other),
                    *extra,
                )
                assert fresh.status == 200, (target, accept, other)
                assert fresh.header("etag") == tag
                assert fresh.body == ok.body


@pytest.mark.parametrize("path", [DOCUMENT, QUERY])
def test_several_accept_encoding_lines_are_one_list(api: Api, path: str) -> None:
    """``Accept-Encoding: gzip`` then ``Accept-Encoding: deflate`` accepts gzip (the last
    line alone would accept none); ``If-None-Match`` over two lines likewise."""
    for target, extra in _ways(path):
        one_line = request(api, "GET", target, ("Accept-Encoding", "gzip, deflate"), *extra)
        assert one_line.header("content-encoding") == "gzip", target
        lines = (("Accept-Encoding", "gzip"), ("Accept-Encoding", "deflate"))
        two_lines = request(api, "GET", target, *lines, *extra)
        assert two_lines.status == 200
        assert _without_date(two_lines) == _without_date(one_line), target
        assert two_lines.body == one_line.body
        tag = one_line.header("etag")
        assert tag is not None
        conditions = (("If-None-Match", '"other"'), ("If-None-Match", tag))
        not_modified = request(api, "GET", target, *lines, *conditions, *extra)
        assert not_modified.status == 304, target
        assert not_modified.header("etag") == tag


# -- item 5: no redirect built from Host --------------------------------------------------


def test_a_trailing_slash_answers_404_never_a_redirect_to_the_host(api: Api) -> None:
    assert request(api, "GET", DOCUMENT, ("Accept-Encoding", "identity")).status == 200
    for target in (DOCUMENT + "/", DOCUMENT + "/?fields=date", "/v1/states/ca/daily.json/"):
        answer = request(api, "GET", target, host="evil.example")
        error(answer, 404, "not_found")
        assert answer.header("location") is None, answer
        assert b"evil.example" not in answer.body


# -- item 6: unusual methods add no series -------------------------------------------------

# Methods httptools parses that the api does not answer (CONNECT takes another target form).
UNUSUAL_METHODS = (
    "DELETE",
    "POST",
    "PUT",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
)


def test_the_labelled_methods_are_the_apis_own() -> None:
    """The methods kept as labels are those the app's routes answer, and CORS preflights'."""
    routed = {m for route in ROUTES if isinstance(route, APIRoute) for m in route.methods or ()}
    assert routed | {"OPTIONS"} == LABELLED_METHODS


def test_unusual_methods_are_counted_as_other(api: Api) -> None:
    def series() -> dict[tuple[str, str, str], float]:
        samples = metric_samples(httpx.get(api.base.metrics).text)
        return {
            (labels["route"], labels["method"], labels["status"]): value
            for (name, frozen), value in samples.items()
            if name == "covid_stats_api_requests_total"
            for labels in [dict(frozen)]
        }

    before = series()
    answers = [request(api, method, DOCUMENT).status for method in UNUSUAL_METHODS]
    assert set(answers) == {405}, answers  # each answered, by the app
    deadline = time.monotonic() + 10
    while True:
        after = series()
        counted = {key: after[key] - before.get(key, 0) for key in after}
        others = sum(v for (_, method, _), v in counted.items() if method == OTHER_METHOD)
        if others >= len(UNUSUAL_METHODS) or time.monotonic() > deadline:
            break
    assert others == len(UNUSUAL_METHODS), counted
    methods = {method for _, method, _ in after}
    assert methods <= LABELLED_METHODS | {OTHER_METHOD}, methods


# -- item 7: every error says how long it may be cached ------------------------------------


def test_every_error_carries_cache_control(api: Api) -> None:
    """Errors of the app and of the protocol: those that depend on the URL alone may be
    kept a while, those that depend on the request's headers, bytes or time never."""
    head_limit = 16384  # HTTP_MAX_REQUEST_HEAD_BYTES (the default)
    found = {
        404: (request(api, "GET", "/v1/nothing.json"), "not_found"),
        405: (request(api, "DELETE", DOCUMENT), "method_not_allowed"),
        422: (request(api, "GET", "/v1/us/daily.json?lastdays=0"), "invalid_parameter"),
        414: (request(api, "GET", "/v1/us/daily.json?x=" + "a" * head_limit), "uri_too_long"),
        431: (
            request(api, "GET", DOCUMENT, ("X-Big", "b" * head_limit)),
            "headers_too_large",
        ),
        400: (_parse(_raw(api.port, b"NOT HTTP AT ALL\r\n\r\n")), "bad_request"),
        408: (_parse(_raw(api.port, b"GET " + DOCUMENT.encode())), "request_timeout"),
    }
    refused_preflight = request(
        api,
        "OPTIONS",
        DOCUMENT,
        ("Origin", "https://elsewhere.example"),
        ("Access-Control-Request-Method", "DELETE"),
    )
    error(refused_preflight, 400, "cors_preflight_refused")
    assert refused_preflight.header("cache-control") == "no-store"
    for status, (answer, code) in found.items():
        error(answer, status, code)
        kept = answer.header("cache-control")
        if status in (404, 405, 422):
            assert kept is not None
            assert kept.startswith("public, max-age="), (status, kept)
        else:
            assert kept == "no-store", (status, kept)


# -- item 10 (protocol): Transfer-Encoding and %2F -----------------------------------------


def test_a_transfer_coding_other_than_chunked_is_refused(api: Api) -> None:
    chunked_body = b"0\r\n\r\n"
    ok = request(api, "GET", DOCUMENT, ("Transfer-Encoding", "chunked"), tail=chunked_body)
    assert ok.status == 200
    assert json.loads(ok.body)[0]["date"]
    for lines, status, code in [
        ([("Transfer-Encoding", "xchunked")], 400, "bad_transfer_encoding"),
        # httptools refuses these itself, as it reads the header: not HTTP/1.1.
        ([("Transfer-Encoding", "chunked, gzip")], 400, "bad_request"),
        ([("Transfer-Encoding", "chunked")] * 2, 400, "bad_request"),
        ([("Transfer-Encoding", "identity")], 400, "bad_transfer_encoding"),
        ([("Transfer-Encoding", "gzip, chunked")], 501, "transfer_coding_not_implemented"),
        (
            [("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")],
            501,
            "transfer_coding_not_implemented",
        ),
    ]:
        answer = request(api, "GET", DOCUMENT, *lines, tail=chunked_body)
        error(answer, status, code)
        assert answer.header("connection") == "close"


def test_an_encoded_slash_does_not_separate_segments(api: Api) -> None:
    california = request(api, "GET", STATE_DOCUMENT, ("Accept-Encoding", "identity"))
    assert california.status == 200
    # Other encoded characters are decoded as before: the same document.
    spelled = request(api, "GET", "/v1/states/%63a/current.json", ("Accept-Encoding", "identity"))
    assert spelled.body == california.body
    for target in (
        "/v1/states/ca%2fcurrent.json",
        "/v1/states/ca%2Fcurrent.json",
        "/v1%2fus/current.json",
    ):
        for extra in ((), (VIA_ASGI,)):
            answer = request(api, "GET", target, ("Accept-Encoding", "identity"), *extra)
            error(answer, 404, "not_found")


def test_routed_path_decodes_all_but_encoded_slashes() -> None:
    """As uvicorn decodes a path, but ``%2F`` (any case) kept; a query string some ASGI
    clients leave in ``raw_path`` (httpx's transport) is not part of the path."""
    assert routed_path(b"/v1/states/%63a/current.json") == "/v1/states/ca/current.json"
    assert routed_path(b"/v1/states/ca%2fcurrent.json") == "/v1/states/ca%2Fcurrent.json"
    assert routed_path(b"/v1%2F%2fus?x=%2f") == "/v1%2F%2Fus"
