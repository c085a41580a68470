"""``make bench``: the api's cached reads, side by side with the naive path and the ceiling.

One run, on throwaway Redis and PostgreSQL loaded through the real fetcher:

- (a) the original example's naive path (Redis GET + ``json.loads`` + return the dict),
  a bench-only route of the same app under the same server flags;
- (b) our endpoints: ``/covid-stats``, ``/v1/us/current.json``, ``/v1/states/current.json``,
  a warm query, and the 304 path;
- (c) the ceiling: a bare ASGI callable returning the ``/covid-stats`` bytes.

Per-core mode: every server runs one uvicorn worker under gunicorn pinned to CPU 0, and wrk
(Debian package ``wrk``: ``apt-get install wrk``) is pinned to CPU 1. Rounds are interleaved
(a b c a b c ...) and medians reported. Validity first: (a) and (b) return the same parsed
JSON, and (b) returns the fetcher's exact bytes. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from covid_stats_contract.keys import RedisKeys
from covid_stats_runtime.logs import configure_logging
from devstack.bench_app import NAIVE_KEYS
from devstack.procs import free_port, pdeathsig_preexec, terminate, wait_until
from devstack.servers import LocalPostgres, LocalRedis

SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "covidtracking"
ARCHIVE = SHARED / "ctp_v1_api_snapshot_20200902"


@dataclass
class Scenario:
    label: str
    url: str
    headers: list[str] = field(default_factory=list)
    runs: list[dict[str, float]] = field(default_factory=list)


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(
    url: str, connections: int, seconds: int, headers: list[str], pin: bool
) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    if pin:
        argv = ["taskset", "-c", "1", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def latency(percent: str) -> float:  # NaN when wrk got no answer at all
        found = re.search(rf"^\s+{percent}%\s+(\S+)\s*$", out, re.M)
        return _seconds(found[1]) if found else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "rps": float(rps[1]) if rps else 0.0,
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": float(non2xx[1]) if non2xx else 0.0,
        "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


def _server(
    app: str, port: int, env: dict[str, str], log: Path, pin: bool
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "gunicorn", "-c", "python:covid_stats_api.serving.gunicorn_conf",
        "--workers", "1", "--bind", f"127.0.0.1:{port}", app,
    ]  # fmt: skip
    if pin:
        argv = ["taskset", "-c", "0", *argv]
    # Each server's /metrics listener (in its gunicorn master) on a port of its own.
    env = {**env, "API_METRICS_PORT": str(free_port())}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
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


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian/Ubuntu)", file=sys.stderr)
        return 2
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    with tempfile.TemporaryDirectory(prefix="covid-stats-bench-", ignore_cleanup_errors=True) as d:
        state = Path(d)
        with LocalRedis(state) as local_redis, LocalPostgres(state) as local_pg:
            return _run(state, local_redis, local_pg, args.seconds, args.rounds, pin)


def _run(
    state: Path,
    local_redis: LocalRedis,
    local_pg: LocalPostgres,
    seconds: int,
    rounds: int,
    pin: bool,
) -> int:
    env = {
        **os.environ,
        "REDIS_URL": local_redis.url,
        "DATABASE_URL": local_pg.url,
        "LOG_LEVEL": "WARNING",
        "WEB_CONCURRENCY": "1",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "-m", "stats_fetcher", "migrate"], env=env, check=True)
        up_port = free_port()
        source = ["--dataset", str(ARCHIVE)] if ARCHIVE.is_dir() else ["--synthetic"]
        with (state / "upstream.log").open("ab") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "replay_upstream", "--port", str(up_port), *source],
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
        api_port, bare_port = free_port(), free_port()
        api = f"http://127.0.0.1:{api_port}"
        bare = f"http://127.0.0.1:{bare_port}"
        processes.append(_server("devstack.bench_app:app", api_port, env, state / "api.log", pin))
        wait_until(lambda: _ok(f"{api}/covid-stats"), 60, what="the api")
        ours = httpx.get(f"{api}/covid-stats").content
        body_file = state / "bare-body"
        body_file.write_bytes(ours)
        bare_env = {**env, "BENCH_BARE_BODY_FILE": str(body_file)}
        processes.append(
            _server("devstack.bench_app:bare", bare_port, bare_env, state / "bare.log", pin)
        )
        wait_until(lambda: _ok(bare), 60, what="the bare ASGI app")

        # Validity before timing.
        naive = httpx.get(f"{api}/bench/naive").json()
        assert naive == json.loads(ours), "(a) and (b) disagree"
        states = httpx.get(f"{api}/v1/states/current.json").content
        assert states == stored("v1/states/current.json"), "(b) is not the fetcher's bytes"
        assert httpx.get(f"{api}/bench/naive-states").json() == json.loads(states)
        assert httpx.get(bare).content == ours
        query = f"{api}/v1/states/daily.json?states=ca,ny&lastdays=14&fields=date,state,positive"
        assert httpx.get(query).status_code == 200
        etag = httpx.get(f"{api}/v1/states/current.json").headers["etag"]

        scenarios = [
            Scenario("(a) naive: Redis GET + json.loads + dict", f"{api}/bench/naive"),
            Scenario("(a) naive, states/current (75 KB)", f"{api}/bench/naive-states"),
            Scenario("(b) /covid-stats", f"{api}/covid-stats"),
            Scenario("(b) /v1/us/current.json", f"{api}/v1/us/current.json"),
            Scenario("(b) /v1/states/current.json (75 KB)", f"{api}/v1/states/current.json"),
            Scenario("(b) warm query (states/daily?states=..&lastdays=..)", query),
            Scenario(
                "(b) 304 (If-None-Match)",
                f"{api}/v1/states/current.json",
                [f"If-None-Match: {etag}"],
            ),
            Scenario("(c) bare ASGI, /covid-stats bytes", bare),
        ]
        for _ in range(rounds):
            for scenario in scenarios:
                scenario.runs.append(wrk(scenario.url, 64, seconds, scenario.headers, pin))
        at_512 = {s.label: wrk(s.url, 512, seconds, s.headers, pin) for s in scenarios}
    finally:
        for process in reversed(processes):
            terminate(process)

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    print(
        f"\nMachine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{'per-core mode: server on CPU 0, wrk on CPU 1' if pin else 'NOT pinned'}; "
        f"wrk -t1, {seconds} s per run, {rounds} interleaved rounds, medians.\n"
    )
    print(
        "| endpoint | req/s (64 conn) | p50 ms | p99 ms | non-2xx "
        "| req/s (512 conn) | p99 ms (512) | non-2xx + errors (512) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for s in scenarios:
        m = {k: statistics.median(r[k] for r in s.runs) for k in ("rps", "p50", "p99", "non2xx")}
        medians[s.label] = m
        big = at_512[s.label]
        print(
            f"| {s.label} | {m['rps']:,.0f} | {_ms(m['p50'])} | {_ms(m['p99'])} "
            f"| {m['non2xx']:.0f} "
            f"| {big['rps']:,.0f} | {_ms(big['p99'])} | {big['non2xx'] + big['errors']:.0f} |"
        )
    naive_rps = medians[scenarios[0].label]["rps"]
    naive_states_rps = medians[scenarios[1].label]["rps"]
    ceiling = medians[scenarios[-1].label]["rps"]
    print("\n| endpoint | b/a (vs naive, same document) | b/c (vs bare ASGI) |\n|---|---:|---:|")
    for s in scenarios[2:-1]:
        rps = medians[s.label]["rps"]
        base = naive_states_rps if "states/current" in s.label or "304" in s.label else naive_rps
        print(f"| {s.label} | {rps / base:.1f}x | {rps / ceiling:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
