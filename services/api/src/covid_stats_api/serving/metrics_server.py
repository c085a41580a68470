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

This module imports no module that defines metrics (only the error shape, from
``covid_stats_runtime.http``): the master never creates metric files of its own.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

from covid_stats_runtime.http import error_body, error_headers

# The one path the listener serves (the chart writes it in its scrape annotations and
# ServiceMonitor; the deploy checks compare them with this).
METRICS_PATH = "/metrics"


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that reads every worker's samples from ``directory`` at each collect."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the master's exit
    allow_reuse_address = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No line per scrape on stderr (the api's logs are JSON; scrapes are not news)."""

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
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True)
    thread.start()
    return server
