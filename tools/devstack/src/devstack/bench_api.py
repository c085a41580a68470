"""``make bench``: the api's cached reads, side by side with the naive path and the ceilings.

One run, on throwaway Redis and PostgreSQL loaded through the real fetcher:

- (a) the original example's naive path (Redis GET + ``json.loads`` + return the dict),
  a bench-only route of the same app under the same server flags;
- (b) our endpoints: ``/covid-stats``, ``/v1/us/current.json``, ``/v1/states/current.json``,
  a warm query, and the 304 path;
- (c) the ceiling for our server stack: a bare ASGI callable returning the same documents'
  bytes under the same gunicorn + uvicorn worker;
- (d) the machine's limit: nginx (Debian's ``/usr/sbin/nginx``, package ``nginx``), one worker,
  serving the same bytes from files with the same Content-Type;
- (e) the edge: Varnish with the repository's VCL in front of the api, on the same core, with
  its hit rate, and the purge-to-fresh time of a publish (``devstack.bench_edge``).

Per-core mode: every server runs one worker pinned to CPU 0 (gunicorn + uvicorn; nginx with
``worker_cpu_affinity``), and wrk (Debian package ``wrk``) is pinned to CPU 1. Rounds are
interleaved (a b c d a b c d ...) and medians reported, with the ratios per document:
project/naive, project/bare, project/nginx. Then, unless ``--no-two-workers``: the api with 2
workers on both cores (not pinned) under wrk -t2 at 64 and 512 connections, with p50, p99 and
errors: a cold run first (the first 512 connections fresh workers see), then after a warm-up
at 512. Every run waits for the servers to be idle, so that none measures the previous one's
queue. Validity first: (a) and (b) return the same parsed JSON, (b) returns the fetcher's
exact bytes, and (c) and (d) return byte for byte what (b) returns. It reports; it asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import platform
import pwd
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import redis

from covid_stats_contract.keys import RedisKeys
from covid_stats_runtime.logs import configure_logging
from devstack import bench_edge
from devstack.bench_app import NAIVE_KEYS
from devstack.procs import free_port, pdeathsig_preexec, tail, terminate, wait_until
from devstack.servers import LocalPostgres, LocalRedis

SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "covidtracking"
ARCHIVE = SHARED / "ctp_v1_api_snapshot_20200902"

# The documents every server of the comparison serves, fetched from the api as it sends them.
COVID_STATS, US_CURRENT, STATES_CURRENT = (
    "/covid-stats", "/v1/us/current.json", "/v1/states/current.json",
)  # fmt: skip
DOCUMENTS = (COVID_STATS, US_CURRENT, STATES_CURRENT)
# A warm query (answered before, so kept by the worker: ``reads.recent``).
WARM_QUERY = "/v1/states/daily.json?states=ca,ny&lastdays=30"
# The 2-worker section: the hot documents of both sizes.
TWO_WORKER_DOCUMENTS = (US_CURRENT, STATES_CURRENT)
NOFILE = 8192  # soft limit for wrk and the servers: 512 connections and then some
IDENTITY = {"Accept-Encoding": "identity"}  # as wrk asks: no Accept-Encoding, the plain body


@dataclass
class Scenario:
    label: str
    url: str
    headers: list[str] = field(default_factory=list)
    at_512: bool = True  # also measured once at 512 connections
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)


@dataclass
class Row:
    """One document across the servers, for the ratios."""

    path: str
    naive: Scenario
    project: Scenario
    bare: Scenario
    nginx: Scenario


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(
    url: str,
    connections: int,
    seconds: int,
    headers: list[str],
    pin: bool,
    threads: int = 1,
    pace_ms: int = 0,
    realtime: bool = False,
) -> dict[str, float]:
    """wrk's figures (req/s, p50, p99, errors). ``pace_ms``: each connection waits that long
    after an answer before its next request (a steady load below the server's capacity, not
    the most it can answer; the latencies leave the waits out). ``realtime``: wrk runs at a
    real-time priority (``SCHED_FIFO``, ``chrt``): nothing else on its CPU delays its clock
    (``bench_queries --apart``: its neighbours run at idle priority, which still takes a
    whole scheduler tick from a normal process now and then)."""
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "--timeout", "10s",
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        if pace_ms:
            script = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".lua"))
            script.write(f"function delay()\n  return {int(pace_ms)}\nend\n")
            script.flush()
            argv += ["-s", script.name]
        return _wrk_run(argv, url, headers, pin, realtime)


# wrk's real-time priority when it measures with ``realtime`` (chrt --fifo; 1 is the lowest).
WRK_FIFO_PRIORITY = 10


def _wrk_run(
    argv: list[str], url: str, headers: list[str], pin: bool, realtime: bool = False
) -> dict[str, float]:
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    if pin:
        argv = ["taskset", "-c", "1", *argv]
    if realtime:
        argv = ["chrt", "--fifo", str(WRK_FIFO_PRIORITY), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket = [int(g) for g in errors.groups()] if errors else [0, 0, 0, 0]  # 0 when absent

    def latency(percent: str) -> float:  # NaN when wrk got no answer at all
        found = re.search(rf"^\s+{percent}%\s+(\S+)\s*$", out, re.M)
        return _seconds(found[1]) if found else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "rps": float(rps[1]) if rps else 0.0,
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": float(non2xx[1]) if non2xx else 0.0,
        "errors": float(sum(socket)),
        **{
            kind: float(n)
            for kind, n in zip(("connect", "read", "write", "timeout"), socket, strict=True)
        },
    }


def warm_query_ratio(warm: Scenario, hot: Scenario) -> str:
    """The line on a warm query's rate against a hot document's (medians, one worker on one
    core, the same harness): issue 25 asks at least 0.5. Both are answered from the
    worker's memory: the query from its recent answers (``reads.recent``)."""
    ratio = warm.median("rps") / hot.median("rps")
    return (
        f"\nWarm query / hot document: {ratio:.2f} ({WARM_QUERY}: {warm.median('rps'):,.0f}"
        f" req/s; {STATES_CURRENT}: {hot.median('rps'):,.0f} req/s; 64 connections)"
    )


def _server(
    app: str, port: int, env: dict[str, str], log: Path, pin: bool, workers: int = 1
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "gunicorn", "-c", "python:covid_stats_api.serving.gunicorn_conf",
        "--workers", str(workers), "--bind", f"127.0.0.1:{port}", app,
    ]  # fmt: skip
    if pin:
        argv = ["taskset", "-c", "0", *argv]
    # Each server's /metrics listener (in its gunicorn master) on a port of its own.
    env = {**env, "API_METRICS_PORT": str(free_port()), "WEB_CONCURRENCY": str(workers)}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),
        )


def _nginx_binary() -> str | None:
    # Debian's is /usr/sbin/nginx, which a non-root user's PATH may leave out.
    return shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _nginx(
    binary: str, root: Path, types: Mapping[str, str], port: int, prefix: Path, pin: bool
) -> subprocess.Popen[bytes]:
    """nginx in the foreground, one worker, everything (config, pid, logs, temp) under
    ``prefix``, serving each path of ``types`` from ``root`` with that Content-Type."""
    prefix.mkdir(parents=True, exist_ok=True)
    locations = "\n".join(
        f'        location = {path} {{ default_type "{content_type}"; }}'
        for path, content_type in types.items()
    )
    lines = ["worker_processes 1;"]
    if pin:
        lines.append("worker_cpu_affinity 01;  # CPU 0, like the other servers")
    if os.geteuid() == 0:  # else the "user" directive is ignored (with a warning)
        user, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
        lines.append(f"user {user} {group};  # the files are ours, in a private directory")
    head = "\n".join(lines)
    config = f"""{head}
pid "{prefix}/nginx.pid";
error_log "{prefix}/error.log" warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 10000000;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    client_body_temp_path "{prefix}/client_body";
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        root "{root}";
{locations}
        location / {{ return 404; }}
    }}
}}
"""
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    argv = [binary, "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"]
    # -e (nginx 1.19.5+): the start-up error log too, not the built-in /var/log/nginx path.
    usage = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    if "-e filename" in usage.stdout + usage.stderr:
        argv[1:1] = ["-e", str(prefix / "error.log")]
    if pin:
        argv = ["taskset", "-c", "0", *argv]
    with (prefix / "stdout.log").open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),
        )


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _serving(process: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    """Wait until ``url`` answers 200; fail at once, with its log, if ``process`` exits."""

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{tail(log)}")
        return _ok(url)

    wait_until(up, 60, what=what)


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def _size(n: int) -> str:
    return f"{n / 1000:.0f} KB" if n >= 10_000 else f"{n} B"


def _raise_nofile(want: int = NOFILE) -> None:
    """The soft open-files limit up to ``want`` (never above the hard one), for us and children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for process in processes:
        try:
            root = psutil.Process(process.pid)
            for each in (root, *root.children(recursive=True)):
                times = each.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _wait_idle(processes: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """Until the servers (and their workers) use under 5 % of a core over 0.2 s: a run must
    not start while the previous one's queue is still being served (after a slow scenario at
    512 connections that took seconds, and its p99 was the previous run's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _cpu_seconds(processes)
        time.sleep(0.2)  # the measuring window
        if _cpu_seconds(processes) - before < 0.01:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=4, help="per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--edge-only",
        action="store_true",
        help="only (b) the documents, (d) nginx and (e) Varnish, then the purge-to-fresh "
        "samples; no 512-connection pass, no 2-worker run",
    )
    parser.add_argument(
        "--purge-samples", type=int, default=5, help="publishes timed to fresh (default 5)"
    )
    parser.add_argument(
        "--two-workers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the 2-worker run on both cores at 64 and 512 connections (default on)",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian/Ubuntu)", file=sys.stderr)
        return 2
    nginx = _nginx_binary()
    if nginx is None:
        print("nginx is not installed: apt-get install nginx (Debian/Ubuntu)", file=sys.stderr)
        return 2
    _raise_nofile()
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    with tempfile.TemporaryDirectory(prefix="covid-stats-bench-", ignore_cleanup_errors=True) as d:
        state = Path(d)
        with LocalRedis(state) as local_redis, LocalPostgres(state) as local_pg:
            return _run(
                state, local_redis, local_pg, nginx, args.seconds, args.rounds, pin,
                args.two_workers and not args.edge_only, args.edge_only, args.purge_samples,
            )  # fmt: skip


def _run(
    state: Path,
    local_redis: LocalRedis,
    local_pg: LocalPostgres,
    nginx_binary: str,
    seconds: int,
    rounds: int,
    pin: bool,
    two_workers: bool,
    edge_only: bool = False,
    purge_samples: int = 5,
) -> int:
    env = {
        **os.environ,
        "REDIS_URL": local_redis.url,
        "DATABASE_URL": local_pg.url,
        "LOG_LEVEL": "WARNING",
        "WEB_CONCURRENCY": "1",
        # No worker recycling: the one-core api serves over a million requests here, and the
        # recycle (GUNICORN_MAX_REQUESTS, 1,000,000 as shipped) would land inside one run at
        # random and make its p99 (a drain and a new worker's start, seconds at 512
        # connections). What a recycle costs is the system tests' to show (no request lost).
        "GUNICORN_MAX_REQUESTS": "0",
    }
    processes: list[subprocess.Popen[bytes]] = []
    two: list[tuple[str, int, dict[str, float]]] = []
    try:
        subprocess.run([sys.executable, "-m", "stats_fetcher", "migrate"], env=env, check=True)
        up_port = free_port()
        source = ["--dataset", str(ARCHIVE)] if ARCHIVE.is_dir() else ["--synthetic"]
        with (state / "upstream.log").open("ab") as out:
            processes.append(
                subprocess.Popen(
                    # --control: the purge-to-fresh samples revise a state (bench_edge)
                    [
                        sys.executable,
                        "-m",
                        "replay_upstream",
                        "--port",
                        str(up_port),
                        "--control",
                        *source,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=pdeathsig_preexec(),
                )
            )
        env["UPSTREAM_BASE_URL"] = f"http://127.0.0.1:{up_port}"
        wait_until(lambda: _ok(f"{env['UPSTREAM_BASE_URL']}/v1/status.json"), 60, what="upstream")
        subprocess.run([sys.executable, "-m", "stats_fetcher", "refresh-once"], env=env, check=True)
        client = redis.Redis.from_url(local_redis.url)
        keys = RedisKeys()
        snapshot = client.get(keys.current_snapshot)
        assert isinstance(snapshot, bytes)

        def stored(name: str) -> bytes:
            body = client.hget(keys.document(snapshot.decode(), name), "body")
            assert isinstance(body, bytes)
            return body

        client.set(NAIVE_KEYS["us"], stored("v1/us/current.json"))
        client.set(NAIVE_KEYS["states"], stored("v1/states/current.json"))
        api_port, bare_port, nginx_port = free_port(), free_port(), free_port()
        api = f"http://127.0.0.1:{api_port}"
        bare = f"http://127.0.0.1:{bare_port}"
        nginx = f"http://127.0.0.1:{nginx_port}"
        per_core = [_server("devstack.bench_app:app", api_port, env, state / "api.log", pin)]
        processes += per_core
        _serving(per_core[0], f"{api}/covid-stats", state / "api.log", "the api")

        # The documents as the api sends them, to files: the bare app and nginx serve these.
        served: dict[str, tuple[bytes, str]] = {}
        for path in DOCUMENTS:
            response = httpx.get(f"{api}{path}", headers=IDENTITY)
            response.raise_for_status()
            assert "content-encoding" not in response.headers, path
            served[path] = (response.content, response.headers["content-type"])
        root = state / "documents"
        manifest = {}
        for path, (body, content_type) in served.items():
            file = root / path.lstrip("/")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(body)
            manifest[path] = {"file": str(file), "content_type": content_type}
        (state / "documents.json").write_text(json.dumps(manifest))
        bare_env = {**env, "BENCH_DOCUMENTS": str(state / "documents.json")}
        per_core.append(
            _server("devstack.bench_app:bare", bare_port, bare_env, state / "bare.log", pin)
        )
        processes.append(per_core[-1])
        types = {path: content_type for path, (_, content_type) in served.items()}
        per_core.append(_nginx(nginx_binary, root, types, nginx_port, state / "nginx", pin))
        processes.append(per_core[-1])
        _serving(per_core[1], f"{bare}{COVID_STATS}", state / "bare.log", "the bare ASGI app")
        _serving(per_core[2], f"{nginx}{COVID_STATS}", state / "nginx" / "error.log", "nginx")
        varnish = bench_edge.start(state, api_port, pin)
        assert varnish.process is not None
        per_core.append(varnish.process)
        processes.append(varnish.process)
        bench_edge.check(varnish, served)

        # Validity before timing.
        ours = served[COVID_STATS][0]
        naive = httpx.get(f"{api}/bench/naive").json()
        assert naive == json.loads(ours), "(a) and (b) disagree"
        states = served[STATES_CURRENT][0]
        assert states == stored("v1/states/current.json"), "(b) is not the fetcher's bytes"
        us = served[US_CURRENT][0]
        assert us == stored("v1/us/current.json"), "(b) is not the fetcher's bytes"
        assert httpx.get(f"{api}/bench/naive-states").json() == json.loads(states)
        for name, server in (("(c) bare ASGI", bare), ("(d) nginx", nginx)):
            for path, (body, content_type) in served.items():
                response = httpx.get(f"{server}{path}", headers=IDENTITY)
                assert response.status_code == 200, f"{name} {path}: {response.status_code}"
                assert response.content == body, f"{name} does not send (b)'s bytes for {path}"
                got = response.headers.get("content-type")
                assert got == content_type, f"{name} {path}: Content-Type {got}, not {content_type}"
        query = f"{api}{WARM_QUERY}"
        assert httpx.get(query).status_code == 200
        # The identity body's tag: wrk asks for no coding, and a 304 answers only the tag of
        # the representation a 200 would send (httpx would get the gzip body's).
        current = f"{api}/v1/states/current.json"
        etag = httpx.get(current, headers=IDENTITY).headers["etag"]
        assert httpx.get(current, headers={"If-None-Match": etag, **IDENTITY}).status_code == 304

        naive_us = Scenario("(a) naive: Redis GET + json.loads + dict", f"{api}/bench/naive")
        naive_states = Scenario("(a) naive, states/current (75 KB)", f"{api}/bench/naive-states")
        project = {path: Scenario(f"(b) {path}", f"{api}{path}") for path in DOCUMENTS}
        project[STATES_CURRENT].label += " (75 KB)"
        ceiling = {
            COVID_STATS: Scenario("(c) bare ASGI, /covid-stats bytes", f"{bare}{COVID_STATS}"),
            US_CURRENT: Scenario("(c) bare ASGI, us/current bytes", f"{bare}{US_CURRENT}"),
            STATES_CURRENT: Scenario(
                "(c) bare ASGI, states/current bytes (75 KB)", f"{bare}{STATES_CURRENT}"
            ),
        }
        limit = {
            COVID_STATS: Scenario("(d) nginx, /covid-stats bytes", f"{nginx}{COVID_STATS}"),
            US_CURRENT: Scenario("(d) nginx, us/current bytes", f"{nginx}{US_CURRENT}"),
            STATES_CURRENT: Scenario(
                "(d) nginx, states/current bytes (75 KB)", f"{nginx}{STATES_CURRENT}"
            ),
        }
        # Measured at 64 connections only (the 512-connection pass is the api's and (c)'s).
        for scenario in (ceiling[US_CURRENT], ceiling[STATES_CURRENT], *limit.values()):
            scenario.at_512 = False
        warm = Scenario("(b) warm query (states/daily?states=ca,ny&lastdays=30)", query)
        others = [
            warm,
            Scenario(
                "(b) 304 (If-None-Match)",
                f"{api}/v1/states/current.json",
                [f"If-None-Match: {etag}"],
            ),
        ]
        edge = {
            path: Scenario(f"(e) Varnish in front of the api, {path}", f"{varnish.url}{path}")
            for path in DOCUMENTS
        }
        for scenario in edge.values():
            scenario.at_512 = False
        scenarios = [
            naive_us,
            naive_states,
            *project.values(),
            *others,
            *ceiling.values(),
            *limit.values(),
            *edge.values(),
        ]
        if edge_only:
            for scenario in project.values():
                scenario.at_512 = False
            scenarios = [*project.values(), *limit.values(), *edge.values()]
        rows = [
            Row(path, naive_states if path == STATES_CURRENT else naive_us, project[path],
                ceiling[path], limit[path])
            for path in DOCUMENTS
        ]  # fmt: skip

        def measure(scenario: Scenario, connections: int) -> dict[str, float]:
            _wait_idle(per_core)
            return wrk(scenario.url, connections, seconds, scenario.headers, pin)

        edge_counters = bench_edge.counters(varnish)
        for _ in range(rounds):
            for scenario in scenarios:
                scenario.runs.append(measure(scenario, 64))
        edge_rate = bench_edge.hit_rate(edge_counters, bench_edge.counters(varnish))
        at_512 = {s.label: measure(s, 512) for s in scenarios if s.at_512}
        purges = (
            bench_edge.purge_to_fresh(varnish, api, env, env["UPSTREAM_BASE_URL"], purge_samples)
            if purge_samples > 0
            else None
        )

        if two_workers:
            for process in per_core:  # the cores to the 2-worker api alone
                terminate(process)
            port = free_port()
            wide = f"http://127.0.0.1:{port}"
            processes.append(
                _server("devstack.bench_app:app", port, env, state / "api2.log", False, 2)
            )
            _serving(processes[-1], f"{wide}{US_CURRENT}", state / "api2.log", "the 2-worker api")
            both = processes[-1:]
            # The first burst of 512 connections on fresh workers, reported apart ("cold").
            for path in TWO_WORKER_DOCUMENTS:  # each document once through each worker
                wrk(f"{wide}{path}", 64, 1, [], False, threads=2)
            _wait_idle(both)
            cold = wrk(f"{wide}{US_CURRENT}", 512, seconds, [], False, threads=2)
            two.append((f"{US_CURRENT}, cold", 512, cold))
            for path in TWO_WORKER_DOCUMENTS:  # warm at the measured load, not measured
                _wait_idle(both)
                wrk(f"{wide}{path}", 512, 2, [], False, threads=2)
            for connections in (64, 512):
                for path in TWO_WORKER_DOCUMENTS:
                    _wait_idle(both)
                    result = wrk(f"{wide}{path}", connections, seconds, [], False, threads=2)
                    two.append((path, connections, result))
    finally:
        for process in reversed(processes):
            terminate(process)

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    version = subprocess.run([nginx_binary, "-v"], capture_output=True, text=True, check=False)
    print(
        f"\nMachine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{version.stderr.strip().removeprefix('nginx version: ')}, "
        f"{'per-core mode: server on CPU 0, wrk on CPU 1' if pin else 'NOT pinned'}; "
        f"wrk -t1, {seconds} s per run, {rounds} interleaved rounds, medians; worker "
        "recycling off (GUNICORN_MAX_REQUESTS=0); each run starts with the servers idle.\n"
    )
    print(
        "| endpoint | req/s (64 conn) | p50 ms | p99 ms | non-2xx "
        "| req/s (512 conn) | p99 ms (512) | non-2xx + errors (512) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in scenarios:
        line = (
            f"| {s.label} | {s.median('rps'):,.0f} | {_ms(s.median('p50'))} "
            f"| {_ms(s.median('p99'))} | {s.median('non2xx'):.0f} "
        )
        if s.label in at_512:
            big = at_512[s.label]
            line += (
                f"| {big['rps']:,.0f} | {_ms(big['p99'])} | {big['non2xx'] + big['errors']:.0f} |"
            )
        else:
            line += "| - | - | - |"
        print(line)
    bench_edge.report(
        [
            (path, project[path].median("rps"), limit[path].median("rps"),
             edge[path].median("rps"), edge[path].median("p99"))
            for path in DOCUMENTS
        ],
        edge_rate,
        purges,
        bench_edge.version(),
    )  # fmt: skip
    if edge_only:
        return 0
    naive_rps = naive_us.median("rps")
    naive_states_rps = naive_states.median("rps")
    bare_rps = ceiling[COVID_STATS].median("rps")
    print("\n| endpoint | b/a (vs naive, same document) | b/c (vs bare ASGI) |\n|---|---:|---:|")
    for s in [*project.values(), *others]:
        rps = s.median("rps")
        base = naive_states_rps if "states/current" in s.label or "304" in s.label else naive_rps
        print(f"| {s.label} | {rps / base:.1f}x | {rps / bare_rps:.2f} |")

    print(warm_query_ratio(warm, project[STATES_CURRENT]))

    print(
        "\nPer document, req/s at 64 connections (medians, one worker on one core), and the "
        "project's ratios:\n\n| document | (a) naive | (b) project | (c) bare ASGI | (d) nginx "
        "| project/naive | project/bare | project/nginx |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        na, pr, ba, ng = (s.median("rps") for s in (row.naive, row.project, row.bare, row.nginx))
        mark = "*" if row.path == US_CURRENT else ""
        print(
            f"| {row.path} ({_size(len(served[row.path][0]))}) | {na:,.0f}{mark} | {pr:,.0f} "
            f"| {ba:,.0f} | {ng:,.0f} | {pr / na:.1f}x | {pr / ba:.2f} | {pr / ng:.2f} |"
        )
    print(
        "\n\\* the naive route for the US document is /bench/naive: the same document, "
        "wrapped as /covid-stats wraps it."
    )

    if two:
        print(
            f"\n2 workers (WEB_CONCURRENCY=2) on both cores, not pinned; wrk -t2 on the same "
            f'cores; one {seconds} s run each, the servers idle before each. "cold": the '
            "first 512 connections on fresh workers (each document served once before); the "
            "other rows after a 2 s warm-up at 512.\n\n| endpoint | connections | req/s | p50 ms "
            "| p99 ms | non-2xx | socket errors: connect | read | write | timeout |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        for path, connections, r in two:
            print(
                f"| {path} | {connections} | {r['rps']:,.0f} | {_ms(r['p50'])} | {_ms(r['p99'])} "
                f"| {r['non2xx']:.0f} | {r['connect']:.0f} | {r['read']:.0f} | {r['write']:.0f} "
                f"| {r['timeout']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
