"""Helpers the tests share: running the project's real processes and waiting on them."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the venv
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from covid_stats_api.serving.metrics_server import METRICS_PATH
from covid_stats_runtime import tracing
from covid_stats_runtime.http import ErrorBody, ErrorDetail, br_etag, error_body, gzip_etag
from covid_stats_runtime.settings import StoreSettings
from devstack.config_docs import SERVICES
from devstack.procs import free_port, pdeathsig_preexec, terminate, wait_until

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "covidtracking" / "ctp_v1_api_snapshot_20200902"

# The sources of the processes the tests start (the services, their libraries, the replay
# upstream): the environment variables they read themselves are found in them (`environ_reads`).
PRODUCT_SOURCES = (
    "services/*/src/**/*.py",
    "libs/*/src/**/*.py",
    "tools/replay-upstream/src/**/*.py",
)


def _is_os_environ(node: ast.expr | None) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def environ_reads(path: Path) -> set[str]:
    """The variables a module reads from the environment by name: ``os.environ[...]``,
    ``os.environ.get(...)``, ``os.getenv(...)``, and the same on a parameter that defaults
    to ``os.environ``; the name given as a string or as a module-level string constant."""
    tree = ast.parse(path.read_text(), str(path))
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def name(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    def reads(scope: ast.AST, parameters: set[str]) -> set[str]:
        def is_environ(node: ast.expr) -> bool:
            return _is_os_environ(node) or (isinstance(node, ast.Name) and node.id in parameters)

        found: set[str] = set()
        for node in ast.walk(scope):
            key = None
            if isinstance(node, ast.Subscript) and is_environ(node.value):
                key = node.slice
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and (
                    (func.attr == "get" and is_environ(func.value))
                    or (
                        func.attr == "getenv"
                        and isinstance(func.value, ast.Name)
                        and func.value.id == "os"
                    )
                ):
                    key = node.args[0]
            if key is not None and (variable := name(key)) is not None:
                found.add(variable)
        return found

    found = reads(tree, set())
    for node in ast.walk(tree):  # parameters that stand for it: ``environ: ... = os.environ``
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [
                *zip(
                    positional[len(positional) - len(args.defaults) :], args.defaults, strict=True
                ),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            parameters = {arg.arg for arg, default in pairs if _is_os_environ(default)}
            if parameters:
                found |= reads(node, parameters)
    return found


@functools.cache
def project_vars(
    settings: tuple[type[StoreSettings], ...] = tuple(SERVICES.values()),
) -> frozenset[str]:
    """Every variable a developer's shell may carry that must not leak into the processes
    under test: each setting of the services' settings classes (as pydantic-settings names
    them, ``StoreSettings.env_vars``), and each variable the product's code reads itself."""
    read = {
        variable
        for pattern in PRODUCT_SOURCES
        for path in REPO.glob(pattern)
        for variable in environ_reads(path)
    }
    return frozenset(read.union(*(cls.env_vars() for cls in settings)))


def scrubbed(variable: str) -> bool:
    """Whether ``clean_env`` drops a variable: a project variable, or any of OpenTelemetry's
    (the SDK reads the ``OTEL_*`` family, see ``covid_stats_runtime.tracing``)."""
    return variable in project_vars() or variable.startswith(tracing.OTEL_ENV_PREFIX)


def representation_variants(tag: str) -> list[tuple[str, dict[str, str]]]:
    """The requests (method, headers) that reach each representation of one answer whose
    identity ETag is ``tag``: each coding, a 304 for each coding's tag, HEAD, CORS."""
    return [
        ("GET", {"accept-encoding": "identity"}),
        ("GET", {"accept-encoding": "gzip"}),
        ("GET", {"accept-encoding": "gzip, deflate, br"}),
        ("GET", {"if-none-match": tag}),
        ("GET", {"if-none-match": gzip_etag(tag)}),
        ("GET", {"if-none-match": br_etag(tag)}),
        ("HEAD", {"accept-encoding": "gzip"}),
        ("GET", {"origin": "https://elsewhere.example"}),  # CORS
    ]


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory outside pytest's base temp dir, which pytest keeps at mode 0700
    (and resets when another pytest session starts): the local PostgreSQL, run as an
    unprivileged user when the tests run as root, could not traverse it."""
    return tempfile.TemporaryDirectory(prefix=f"covid-stats-{prefix}-", ignore_cleanup_errors=True)


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not scrubbed(k)}
    env["LOG_LEVEL"] = "WARNING"
    env.update(overrides)
    return env


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def api_workers(api: ApiUrl) -> list[int]:
    """The pids of the gunicorn workers serving ``api`` now: its master's children."""
    return sorted(child.pid for child in psutil.Process(api.master).children())


@contextlib.contextmanager
def accepted_by(worker: int, workers: Sequence[int]) -> Iterator[None]:
    """New connections to the api accepted by ``worker`` alone: the other ``workers`` stopped
    (SIGSTOP) meanwhile, continued after. Otherwise which worker accepts a new connection is
    the kernel's race, which one worker may win every time against a client quick between
    connections: a warm-up "often enough, on fresh connections" proves nothing then."""
    others = [psutil.Process(pid) for pid in workers if pid != worker]
    for other in others:
        other.suspend()
    try:
        yield
    finally:
        for other in others:
            other.resume()


def warm_workers(api: ApiUrl, paths: Sequence[str], rounds: int = 20) -> dict[str, bytes]:
    """Request each path (``/...``) ``rounds`` times, on fresh connections, the rounds taken in
    turn by each worker (``accepted_by``), so that every worker keeps it in memory; each must
    answer 200. Returns each path's body."""
    bodies: dict[str, bytes] = {}
    serving = api_workers(api)
    for round_ in range(rounds):
        with accepted_by(serving[round_ % len(serving)], serving):
            for path in paths:
                response = httpx.get(f"{api}{path}")
                assert response.status_code == 200, (path, response.text)
                bodies[path] = response.content
    return bodies


@dataclass
class Process:
    """A project process started by a test, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        return terminate(self.proc, timeout=timeout)

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}"
                )
            return http_ok(url)

        wait_until(ready, timeout, interval=0.1, what=f"{self.name} at {url}")


def log_events(output: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's ``output`` whose event is ``event``."""
    lines = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),
        )
    return Process(name, proc, log)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_fetcher(command: str, env: Mapping[str, str], timeout: float = 120) -> Any:
    """Run a ``stats-fetcher`` command to completion; returns the CompletedProcess."""
    return subprocess.run(
        python_module("stats_fetcher", command),
        env=dict(env),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class ApiUrl(str):
    """The api's base URL (its traffic port), and ``metrics``: the URL of its ``/metrics``,
    served on its own port (``API_METRICS_PORT``) by the gunicorn master; ``master``: the
    master's pid."""

    metrics: str
    master: int


def start_api(env: Mapping[str, str], log_dir: Path, workers: int = 2) -> tuple[Process, ApiUrl]:
    """The api under real gunicorn with ``workers`` uvicorn workers on free ports."""
    port = metrics_port = free_port()
    while metrics_port == port:
        metrics_port = free_port()
    if env.get("API_METRICS_PORT") == "0":  # the listener turned off
        metrics_port = 0
    api_env = {
        **env,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_METRICS_PORT": str(metrics_port),
    }
    api_env["WEB_CONCURRENCY"] = str(workers)
    process = spawn(
        f"api-{port}",
        python_module(
            "gunicorn",
            "-c",
            "python:covid_stats_api.serving.gunicorn_conf",
            "covid_stats_api.main:app",
        ),
        api_env,
        log_dir,
    )
    base = ApiUrl(f"http://127.0.0.1:{port}")
    base.metrics = f"http://127.0.0.1:{metrics_port}{METRICS_PATH}"
    base.master = process.proc.pid
    process.wait_http(f"{base}/healthz")
    # Every worker forked, as tests count them: the master forks them up to 0.1 s apart, and
    # a worker forked from the loaded app (preload_app) answers before the next is forked.
    wait_until(lambda: len(api_workers(base)) == workers, 30, what=f"the api's {workers} workers")
    if metrics_port:
        process.wait_http(base.metrics)
    return process, base


@dataclass(frozen=True)
class Upstream:
    """The replay upstream under test, and its control API (faults, request counters)."""

    url: str
    real_archive: bool

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10)

    def fault(self, path: str, fault: str, **params: Any) -> None:
        response = httpx.put(
            f"{self.url}/_control/faults", json={"path": path, "fault": fault, **params}
        )
        response.raise_for_status()

    def requests(self) -> dict[str, Any]:
        counts: dict[str, Any] = httpx.get(f"{self.url}/_control/requests").json()
        return counts

    def reset_requests(self) -> None:
        httpx.delete(f"{self.url}/_control/requests").raise_for_status()

    def reset(self) -> None:
        httpx.delete(f"{self.url}/_control/faults").raise_for_status()
        self.reset_requests()


RECENT_DAYS = 14
RECENT = ("--last-days", str(RECENT_DAYS))
"""The replay upstream's options for a test marked `recent` (tests/conftest.py): only the
dataset's last RECENT_DAYS days, two weeks of every state's records, real ones. Enough for a
series, a change and a revision, at about half the CPU of the whole archive's first refresh
(1.5 s against 3.1 to 3.5 s, the fetcher alone; PostgreSQL writes a seventh of the rows)."""


def start_upstream(
    name: str, log_dir: Path, *options: str, ready_path: str = ""
) -> tuple[Process, Upstream]:
    """The replay upstream (the real archive when it is here, else the synthetic dataset)
    with its control API on, started with ``options``, once it answers
    ``<ready_path>/v1/status.json``."""
    port = free_port()
    source = ["--dataset", str(ARCHIVE)] if ARCHIVE.is_dir() else ["--synthetic"]
    process = spawn(
        name,
        python_module(
            "replay_upstream",
            *("--host", "127.0.0.1", "--port", str(port), "--control"),
            *options,
            *source,
        ),
        clean_env(),
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}{ready_path}/v1/status.json")
    return process, Upstream(url, ARCHIVE.is_dir())


def fail_fast_env(
    redis_url: str, database_url: str, upstream_url: str, **more: str
) -> dict[str, str]:
    """Environment for the fetcher and the api pointed at test servers, failing fast: one
    quick upstream retry, short timeouts."""
    return clean_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        UPSTREAM_BASE_URL=upstream_url,
        UPSTREAM_RETRIES="1",
        UPSTREAM_RETRY_INITIAL_SECONDS="0.05",
        UPSTREAM_TIMEOUT_SECONDS="2",
        **more,
    )


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# The sample names of a metric family of each type, after the family's own name.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


def defined_metrics(module: ModuleType) -> dict[str, tuple[str, ...]]:
    """The metrics a module defines (every prometheus_client collector among its names):
    {family name: the names of its samples}, as the exposition names them."""
    families: dict[str, tuple[str, ...]] = {}
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffixes = _SAMPLE_SUFFIXES[family.type]
                families[family.name] = tuple(family.name + suffix for suffix in suffixes)
    return families


def metric_names(*modules: ModuleType) -> set[str]:
    """The names of the series the modules' metrics export: what a PromQL expression may
    select (a counter's ``_total``, a histogram's ``_bucket``, ``_count`` and ``_sum``, ...)."""
    return {
        sample
        for module in modules
        for samples in defined_metrics(module).values()
        for sample in samples
    }


@dataclass
class Fetcher:
    """A running `stats-fetcher run` process and its HTTP port."""

    process: Process
    url: str
    token: str | None = None  # its REFRESH_TOKEN: what /readyz's details need

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return metric_samples(httpx.get(f"{self.url}/metrics").text)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.metrics().items()
            if sample == name and wanted <= sample_labels
        )

    def ready(self) -> dict[str, Any]:
        """``/readyz``'s body, with its details (the token's)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body: dict[str, Any] = httpx.get(f"{self.url}/readyz", headers=headers).json()
        return body

    def is_leader(self) -> bool:
        try:
            return bool(self.ready().get("leader"))
        except httpx.HTTPError:
            return False


def start_fetcher(
    env: Mapping[str, str], log_dir: Path, name: str = "fetcher", token: bool = True
) -> Fetcher:
    """A fetcher on a free port, with a random ``REFRESH_TOKEN`` unless ``env`` names one
    (``/readyz`` shows its details to the token only) or ``token`` is False (none: the
    endpoint is off)."""
    port = free_port()
    env = {**env, "FETCHER_HOST": "127.0.0.1", "FETCHER_PORT": str(port)}
    if token and "REFRESH_TOKEN" not in env:
        env["REFRESH_TOKEN"] = secrets.token_urlsafe(24)
    process = spawn(f"{name}-{port}", python_module("stats_fetcher", "run"), env, log_dir)
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/healthz")
    return Fetcher(process, url, env.get("REFRESH_TOKEN"))


# Lines a test wants in the terminal summary (printed by conftest's pytest_terminal_summary,
# so they appear in CI logs with or without -s).
SUMMARY_LINES: list[str] = []


def summary(line: str) -> None:
    SUMMARY_LINES.append(line)
    print(line)


def check_error_body(body: bytes, status: int, code: str) -> ErrorDetail:
    """An error body as every server of the project must write it: the shared shape, in the
    bytes ``covid_stats_runtime.http.error_body`` renders (a body built anywhere else, with
    spaces, another key order or a field more or less, fails here)."""
    detail = ErrorBody.model_validate_json(body).error
    assert body == error_body(detail.status, detail.code, detail.message, detail.parameter)
    assert (detail.status, detail.code) == (status, code), detail
    assert detail.message
    return detail


def receive_answer(sock: socket.socket) -> bytes:
    """One HTTP/1.1 answer from a keep-alive connection: the head, the blank line, and as
    many bytes of body as its Content-Length says (the connection stays usable)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return head + b"\r\n\r\n" + body


@dataclass
class RawAnswer:
    """What a raw-socket client read: ``status`` None when the connection closed (or was
    reset) without an answer; header names in lower case."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    raw: bytes


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send ``data`` on a new connection to 127.0.0.1:``port``, read until the server closes
    it (a server that refuses may close before all of ``data`` is sent)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return RawAnswer(None, {}, b"", raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, body, raw)


def sql(database_url: str, statement: str, *args: Any) -> list[Any]:
    """The rows of one SQL statement, on a connection of its own (closed after)."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    return asyncio.run(run())
