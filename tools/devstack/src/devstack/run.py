"""``make run``: the whole system on one machine, with nothing but Python.

Starts, in order: throwaway Redis and PostgreSQL (unless ``REDIS_URL`` / ``DATABASE_URL``
are set), the migrations, the replay upstream (unless ``UPSTREAM_BASE_URL`` is set), the
stats-fetcher and the api under gunicorn. The throwaway servers get random passwords, new at
each run; the services get them in their URLs, and ``<state dir>/stores.env`` (readable by
the user only) holds those URLs for a developer's own tools. Neither they nor the refresh
token is ever printed: URLs are shown with ``***`` for the password. Prints the URLs once
the api is ready. On Ctrl-C (SIGINT) or SIGTERM, or when any of them exits, stops everything
in reverse order. Every child dies with this process even if it is SIGKILLed
(``PR_SET_PDEATHSIG``), so a later run starts cleanly. Each child's output is printed with
its name in front.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from covid_stats_api.core.config import Settings
from covid_stats_api.serving.metrics_server import METRICS_PATH
from devstack.procs import free_port, pdeathsig_preexec, terminate, wait_until
from devstack.servers import LocalPostgres, LocalRedis, redact_url
from devstack.varnish import Varnish

# Defaults of `make run` that differ from the services' own (container) defaults.
LOCAL_DEFAULTS = {"API_HOST": "127.0.0.1", "WEB_CONCURRENCY": "2"}
# EDGE_CACHE=1 make run: Varnish (deploy/varnish/default.vcl) in front of the api, its public
# port EDGE_CACHE_PORT and its purge port (the fetcher's PURGE_URLS) EDGE_CACHE_PURGE_PORT.
EDGE_CACHE_DEFAULTS = {"EDGE_CACHE_PORT": "6081", "EDGE_CACHE_PURGE_PORT": "6091"}


class StartupError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stop_timeout: float
    _pump: threading.Thread | None = None

    def start_pump(self, out: IO[str]) -> None:
        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                out.write(f"{self.name:>8} | {line.decode('utf-8', 'replace')}")
                out.flush()

        self._pump = threading.Thread(target=pump, name=f"pump-{self.name}", daemon=True)
        self._pump.start()


@dataclass
class Stack:
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    servers: list[LocalRedis | LocalPostgres] = field(default_factory=list)
    edge: Varnish | None = None

    def spawn(
        self,
        name: str,
        argv: list[str],
        stop_timeout: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> Child:
        """Start ``argv`` with the stack's environment (``env``, if given, instead)."""
        proc = subprocess.Popen(
            argv,
            env=self.env if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            preexec_fn=pdeathsig_preexec(),
        )
        child = Child(name, proc, stop_timeout)
        child.start_pump(sys.stdout)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            terminate(child.proc, timeout=child.stop_timeout)
        for server in reversed(self.servers):
            server.stop()

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check


def _alive_and(child: Child, check: Callable[[], bool]) -> Callable[[], bool]:
    def predicate() -> bool:
        if child.proc.poll() is not None:
            raise StartupError(f"{child.name} exited with status {child.proc.returncode}")
        return check()

    return predicate


def _local_url(host: str, port: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - listening everywhere; call it locally
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def api_metrics_url(env: dict[str, str]) -> str:
    """The api's /metrics: on its own port (API_METRICS_PORT, else the api's default)."""
    port = env.get("API_METRICS_PORT") or str(Settings.model_fields["api_metrics_port"].default)
    return _local_url(env["API_HOST"], port) + METRICS_PATH


def _write_private(path: Path, text: str) -> None:
    """Write a file only the user may read, created so from the start (no window)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def start(stack: Stack, state_dir: Path) -> str:
    """Start everything; returns the api's base URL."""
    env = stack.env
    python = sys.executable
    stores_env = state_dir / "stores.env"
    stores_env.unlink(missing_ok=True)
    local: dict[str, str] = {}
    if "REDIS_URL" not in env:
        redis = LocalRedis(state_dir, password=secrets.token_urlsafe(24))
        stack.servers.append(redis)
        redis.start()
        env["REDIS_URL"] = local["REDIS_URL"] = redis.url
        print(f"devstack | local Redis      {redis.display_url}", flush=True)
    if "DATABASE_URL" not in env:
        postgres = LocalPostgres(state_dir, password=secrets.token_urlsafe(24))
        stack.servers.append(postgres)
        postgres.start()
        env["DATABASE_URL"] = local["DATABASE_URL"] = postgres.url
        print(f"devstack | local PostgreSQL {postgres.display_url}", flush=True)
    if local:
        _write_private(stores_env, "".join(f"{k}={v}\n" for k, v in local.items()))

    migrate = subprocess.run(
        [python, "-m", "stats_fetcher", "migrate"], env=env, check=False, capture_output=True
    )
    if migrate.returncode != 0:
        raise StartupError(
            f"migrations failed:\n{migrate.stdout.decode()}{migrate.stderr.decode()}"
        )

    if "UPSTREAM_BASE_URL" not in env:
        port = free_port()
        upstream = stack.spawn(
            "upstream",
            [python, "-m", "replay_upstream", "--host", "127.0.0.1", "--port", str(port)],
        )
        env["UPSTREAM_BASE_URL"] = f"http://127.0.0.1:{port}"
        wait_until(
            _alive_and(upstream, _http_ok(f"{env['UPSTREAM_BASE_URL']}/v1/status.json")),
            timeout=30,
            what="the replay upstream",
        )

    edge = _edge_cache(env, state_dir)
    if edge is not None:
        env.setdefault("PURGE_URLS", edge.purge_url)  # the fetcher purges it at each publish
    env.setdefault("FETCHER_HOST", "127.0.0.1")
    env.setdefault("FETCHER_PORT", str(free_port()))
    if "REFRESH_TOKEN" not in env:
        # A throwaway token for this run, kept in a file only the user can read (never printed).
        token_file = state_dir / "refresh-token"
        _write_private(token_file, secrets.token_urlsafe(32))
        env["REFRESH_TOKEN"] = token_file.read_text()
    fetcher = stack.spawn("fetcher", [python, "-m", "stats_fetcher", "run"])
    wait_until(
        _alive_and(
            fetcher, _http_ok(f"{_local_url(env['FETCHER_HOST'], env['FETCHER_PORT'])}/healthz")
        ),
        timeout=30,
        what="the fetcher's HTTP port",
    )
    for key, value in LOCAL_DEFAULTS.items():
        env.setdefault(key, value)
    base = spawn_api(stack, "api", env)
    if edge is not None:
        varnish = stack.spawn("varnish", edge.argv())
        edge.wait_listening(varnish.proc)
        stack.edge = edge
    return base


def spawn_api(stack: Stack, name: str, env: dict[str, str]) -> str:
    """Start the api under gunicorn with ``env`` (``API_HOST``, ``API_PORT``, the stores'
    URLs); returns its base URL once it is ready."""
    api = stack.spawn(
        name,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:covid_stats_api.serving.gunicorn_conf",
            "covid_stats_api.main:app",
        ],
        stop_timeout=30.0,  # longer than gunicorn's graceful_timeout
        env=env,
    )
    base = _local_url(env["API_HOST"], env.get("API_PORT", "8000"))
    wait_until(
        _alive_and(api, _http_ok(f"{base}/readyz")), timeout=60, what=f"the {name} to be ready"
    )
    return base


def _edge_cache(env: dict[str, str], state_dir: Path) -> Varnish | None:
    """The Varnish of ``EDGE_CACHE=1`` (not started), in front of the api's port."""
    if env.get("EDGE_CACHE", "") in ("", "0"):
        return None
    ports = {name: int(env.get(name, default)) for name, default in EDGE_CACHE_DEFAULTS.items()}
    return Varnish(
        workdir=state_dir / "varnish",
        http_port=ports["EDGE_CACHE_PORT"],
        purge_port=ports["EDGE_CACHE_PURGE_PORT"],
        backend_port=int(env.get("API_PORT", "8000")),
    )


def _edge_hint(edge: Varnish | None) -> str:
    if edge is None:
        return ""
    return (
        f"  edge:     {edge.url}/v1/us/current.json  (Varnish in front of the api; the "
        f"fetcher purges {edge.purge_url} at each publish)\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["run"], default="run")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("DEVSTACK_STATE_DIR", ".local")),
        help="where local server data and logs live (default .local, git-ignored)",
    )
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    stack = Stack(env=dict(os.environ))
    status = 0
    try:
        base = start(stack, state_dir)
        fetcher_url = _local_url(stack.env["FETCHER_HOST"], stack.env["FETCHER_PORT"])
        token_file = state_dir / "refresh-token"
        token_hint = f", the token is in {token_file}" if token_file.exists() else ""
        stores_env = state_dir / "stores.env"
        stores_hint = (
            f"  stores:   REDIS_URL and DATABASE_URL, with their passwords, are in {stores_env}\n"
            if stores_env.exists()
            else ""
        )
        print(
            f"\ncovid-stats is running:\n"
            f"  {base}/covid-stats\n  {base}/v1/us/current.json\n"
            f"  {base}/v1/states/current.json\n  {base}/docs\n"
            f"  metrics:  {api_metrics_url(stack.env)}  (the api's, on their own port)\n"
            f"  upstream: {redact_url(stack.env['UPSTREAM_BASE_URL'])}\n"
            f"  fetcher:  {fetcher_url}/metrics  (POST {fetcher_url}/refresh with "
            f"'Authorization: Bearer <token>'{token_hint})\n"
            f"{stores_hint}"
            f"{_edge_hint(stack.edge)}"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stop.wait(0.5):
            exited = stack.exited()
            if exited is not None:
                print(f"devstack | {exited.name} exited ({exited.proc.returncode}); stopping")
                status = 1
                break
    except (StartupError, TimeoutError, RuntimeError) as exc:
        print(f"devstack | start failed: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        print("devstack | stopping", flush=True)
        stack.stop()
        print("devstack | stopped", flush=True)
    return status
