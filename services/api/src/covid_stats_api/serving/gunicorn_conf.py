"""gunicorn settings for the api (``gunicorn -c python:covid_stats_api.serving.gunicorn_conf``).

Everything tunable comes from the api's settings (``API_HOST``, ``API_PORT``,
``WEB_CONCURRENCY``, ``GUNICORN_*``) so that one table documents it.
"""

import gc
import os
import shutil
import tempfile
from typing import Any

# The gc module's recipe for a server that forks (gc.freeze): no collection in the master
# while it loads the settings and then the app (preload_app: about 700 modules; the
# collections that ran meanwhile found almost nothing to free and cost about 15 % of its
# start-up CPU), and everything it made frozen right before the first fork (when_ready), so
# that no collection, in the master or a worker, walks those objects again or writes to the
# pages a worker shares with the master. This module is imported once per master (a HUP
# reload does not run it again).
gc.disable()

from covid_stats_api.core.config import get_settings  # noqa: E402
from covid_stats_runtime.logs import logging_config  # noqa: E402

_settings = get_settings()

bind = [f"{_settings.api_host}:{_settings.api_port}"]
workers = _settings.web_concurrency
# uvicorn-worker's class (uvloop, httptools) serving through the server adapter
# (covid_stats_api.serving.server.uvicorn_adapter: uvicorn's httptools protocol with a bounded
# request head, HTTP_MAX_REQUEST_HEAD_BYTES, a request deadline, HTTP_REQUEST_TIMEOUT_SECONDS,
# and an idle timer on new connections), with a drain on shutdown that drops no request on a
# stop, a reload or a recycle, and an accept loop that empties the listen queue each turn
# (uvloop's takes one connection per turn: see covid_stats_api.serving.server.accept).
# gunicorn's own limit_request_line / limit_request_fields / limit_request_field_size bound
# only gunicorn's sync-style workers' parser: they do nothing for uvicorn workers.
worker_class = "covid_stats_api.serving.server.uvicorn_adapter.DrainingUvicornWorker"

# A worker silent for this long is killed and replaced.
timeout = _settings.gunicorn_timeout_seconds
# On SIGTERM or a reload, workers get this long to finish in-flight requests; the pod's
# termination grace period must be longer (see the Helm chart).
graceful_timeout = _settings.gunicorn_graceful_timeout_seconds
# Idle keep-alive connections are held this long (65 s): longer than a load balancer's own
# idle timeout (60 s for ALB and ingress-nginx) is what avoids resets on reused connections.
# A new connection that sends nothing gets HTTP_NEW_CONNECTION_TIMEOUT_SECONDS (the adapter).
keepalive = _settings.gunicorn_keepalive_seconds
# Peers trusted to name the client in X-Forwarded-For (uvicorn's proxy headers middleware
# then sets the client address the rate limit counts by). Only the ingress or load balancer.
forwarded_allow_ips = _settings.forwarded_allow_ips
# Workers are recycled after this many requests (+ a random jitter so they do not all
# restart at once): bounds the damage of a slow leak. 0 turns it off. Recycling closes the
# worker's keep-alive connections, so it must be rare at this service's rates: 1,000,000 is
# about a minute of one core at full load (make bench), hours at ordinary loads.
max_requests = _settings.gunicorn_max_requests
max_requests_jitter = _settings.gunicorn_max_requests_jitter
# The worker heartbeat file lives in memory, not on a (possibly read-only) disk.
worker_tmp_dir = "/dev/shm"  # noqa: S108 - tmpfs on Linux, as gunicorn's docs advise

# gunicorn's access log is off: the api writes its own, sampled (ACCESS_LOG_SAMPLE_RATE), as
# at the request rates this service is built for a line per request would drown everything
# else. gunicorn's and uvicorn's own messages are JSON lines on stdout like the api's.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = logging_config(_settings.log_level)

# gunicorn 25+ opens a control socket under $HOME by default: it would collide between
# instances on one machine and fail on a read-only root filesystem. Not needed here.
control_socket_disable = True


# Prometheus multiprocess mode (see covid_stats_api.metrics): one directory per pod (the
# chart mounts an in-memory emptyDir), emptied when the master starts; otherwise a temporary
# one, in memory too where the machine has /dev/shm (each sample is a write to these files).
# Set here, when gunicorn reads this file: the master loads the app (preload_app, below)
# before any hook runs, and prometheus_client picks its storage when first imported.
def _metrics_directory() -> tuple[str, bool]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    created = not directory
    if not directory:
        memory = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs
        directory = tempfile.mkdtemp(prefix="covid-stats-metrics-", dir=memory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.makedirs(directory, exist_ok=True)
    for entry in os.scandir(directory):  # samples of a previous run are not this pod's
        if entry.is_file():
            os.unlink(entry.path)
    return directory, created


_metrics_dir, _created_metrics_dir = _metrics_directory()

# The master imports and builds the app once, and forks every worker from it: a worker (a
# new one, a recycled one, GUNICORN_MAX_REQUESTS) starts serving without importing anything,
# and the workers share the master's pages of code and data until they write to them. The
# app opens its connections, threads and timers in its lifespan, which each worker runs after
# the fork; OpenTelemetry's span processor restarts its thread in the child by itself.
preload_app = True


# /metrics on its own port, served by the master from every worker's files (see
# covid_stats_api.serving.metrics_server); API_METRICS_PORT=0 turns it off.
_metrics_listener: list[Any] = []


def when_ready(server: Any) -> None:
    # The app is loaded, the workers not forked yet: freeze what the master made, then collect
    # again (the workers inherit both).
    gc.freeze()
    gc.enable()
    # The app the master loaded made its metrics' files under the master's pid; the master
    # counts nothing, and its zeros would win every "livemin" gauge over the workers' values.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
    if not _settings.api_metrics_port:
        return
    from covid_stats_api.serving.metrics_server import METRICS_PATH, serve

    host, port = _settings.api_host, _settings.api_metrics_port
    try:
        listener = serve(host, port, _metrics_dir)
    except OSError as exc:  # the port is taken: no api without its metrics
        server.log.error("metrics listener cannot listen on %s:%s: %s", host, port, exc)
        raise
    _metrics_listener.append(listener)
    server.log.info("metrics listener on %s:%s%s", host, port, METRICS_PATH)


def post_fork(server: Any, worker: Any) -> None:
    # A worker inherits the master's listening socket: it must not hold the port open.
    for listener in _metrics_listener:
        listener.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if _created_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
