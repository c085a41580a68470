"""The api's ``/metrics`` listener: its own port (``API_METRICS_PORT``), in the gunicorn master.

prometheus_client's multiprocess mode, as its documentation sets it up under gunicorn: the
request workers write their samples to files in ``PROMETHEUS_MULTIPROC_DIR`` and one
listener outside them adds every worker's files up on each scrape. That listener is a small
threaded WSGI server started in the master (``gunicorn_conf.when_ready``), so:

- the traffic port has no ``/metrics`` (it answers 404 there like any unknown path): an
  Ingress or HTTPRoute in front of the api publishes no metrics, and a NetworkPolicy can let
  only Prometheus reach this port;
- a scrape costs the request workers nothing and is answered while every worker is busy,
  recycling or stuck;
- the counters are exact: after K requests the request counter reads K, whichever worker
  answered them, dead workers included.

What the listener accepts (docs/limits.md): one request per connection, answered over
HTTP/1.1 with ``Connection: close`` and no ``Server`` banner; a request line and headers as
Python's ``http.server`` bounds them (a line up to 64 KiB, up to 100 headers: else 414 or
431, in the error shape); each connection is closed ``CONNECTION_SECONDS`` after it was
accepted, whatever it is doing (a silent, trickling or not-reading client holds a thread no
longer); at most ``MAX_CONNECTIONS`` are served at once, one more is answered 503 and
closed.

This module imports no module that defines metrics (only the error shape, from
``covid_stats_runtime.http``): the master never creates metric files of its own.
"""

from __future__ import annotations

import http
import io
import socket
import threading
import time
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import IO, Any, cast
from wsgiref.headers import Headers
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from covid_stats_runtime.http import (
    CONNECTION_CLOSE,
    closing_error_answer,
    error_body,
    error_headers,
)

# The one path the listener serves (the chart writes it in its scrape annotations and
# ServiceMonitor; the deploy checks compare them with this).
METRICS_PATH = "/metrics"
# A connection is closed this long after it was accepted (Prometheus's default scrape
# timeout; a scrape of this listener takes milliseconds).
CONNECTION_SECONDS = 10.0
# Connections served at once (a thread each): Prometheus (a pair for HA) and a person or two.
MAX_CONNECTIONS = 8


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that reads every worker's samples from ``directory`` at each collect."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` at once: one more is answered
    503 and closed."""

    daemon_threads = True  # a slow scraper never holds up the master's exit
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            message = f"This port serves at most {MAX_CONNECTIONS} connections at once."
            try:
                request.settimeout(1.0)
                request.sendall(closing_error_answer(503, "unavailable", message, []))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client gone or too slow: nothing to report (the handler closes it)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _DeadlineReader(io.RawIOBase):
    """A socket's input that ends in a ``TimeoutError`` at ``deadline`` (``time.monotonic``):
    each read may wait only what is left of it. The socket's writes share the last timeout
    set, so the answer must be sent by then too."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the connection's time is up")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Answer(ServerHandler):
    """wsgiref's answer over HTTP/1.1, one per connection, without its ``Server`` banner."""

    http_version = "1.1"
    server_software = ""  # none sent
    headers: Headers  # the answer's, set by start_response

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        self.headers[CONNECTION_CLOSE[0].decode()] = CONNECTION_CLOSE[1].decode()


class _Handler(WSGIRequestHandler):
    """One request per connection, within ``CONNECTION_SECONDS`` of its accept; no
    ``Server`` header and no line per scrape on stderr (the api's logs are JSON; scrapes
    are not news); http.server's own refusals (400, 414, 431) in the error shape."""

    protocol_version = "HTTP/1.1"
    # Answers to a request line too broken to name its version get a head too (http.server
    # would answer them headless, as HTTP/0.9).
    default_request_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # http.server's reader: replaced by one with a deadline
        deadline = time.monotonic() + CONNECTION_SECONDS
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        """wsgiref's ``WSGIRequestHandler.handle``, answering with :class:`_Answer`, and
        closing quietly a connection whose time is up or whose client is gone."""
        self.close_connection = True
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # an error was sent
                return
            answer = _Answer(
                cast(IO[bytes], self.rfile),
                cast(IO[bytes], self.wfile),
                self.get_stderr(),
                self.get_environ(),
                multithread=False,
            )
            answer.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back pointer
            answer.run(self.server.get_app())  # type: ignore[attr-defined]
        except (TimeoutError, ConnectionError):
            pass

    def send_response(self, code: int, message: str | None = None) -> None:
        """http.server's, without the ``Server`` header."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's refusals in the error shape (``bad_request``, ``uri_too_long``,
        ``headers_too_large``, ...), closing the connection."""
        status = http.HTTPStatus(code)
        name = {414: "uri_too_long", 431: "headers_too_large"}.get(code, "bad_request")
        body = error_body(code, name, message or status.phrase)
        self.close_connection = True
        self.send_response(code)
        for key, value in error_headers(code, body, CONNECTION_CLOSE):
            self.send_header(key.decode(), value.decode())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _not_found(path: str) -> bytes:
    message = f"No such path: {path} (this port serves {METRICS_PATH} only)"
    return error_body(404, "not_found", message)


def metrics_app(registry: CollectorRegistry) -> Any:
    """A WSGI app answering ``GET``/``HEAD`` of ``METRICS_PATH`` from ``registry``
    (gzip when asked, as prometheus_client does) and 404 with the error shape elsewhere."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            body = _not_found(environ.get("PATH_INFO", ""))
            headers = error_headers(404, body)
            start_response("404 Not Found", [(k.decode(), v.decode()) for k, v in headers])
            return [body]
        return exposition(environ, start_response)  # type: ignore[no-any-return]

    return app


def serve(host: str, port: int, directory: str) -> WSGIServer:
    """Listen on ``host:port`` in a daemon thread; returns the server (``.socket`` to close
    it in forked workers, ``.shutdown()`` to stop). Raises OSError if the port is taken."""
    server_class = _IPv6Server if ":" in host else _Server
    server = make_server(
        host,
        port,
        metrics_app(multiprocess_registry(directory)),
        server_class=server_class,
        handler_class=_Handler,
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True)
    thread.start()
    return server
