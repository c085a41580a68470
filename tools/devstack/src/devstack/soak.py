"""``make soak``: the whole system under a fixed request rate for a long while, watching for
leaks.

Starts everything as ``make run`` does (``devstack.run``: throwaway Redis and PostgreSQL, the
migrations, the replay upstream, the fetcher, the api under gunicorn), on a free api port and
in its own state directory (``$DEVSTACK_STATE_DIR/soak``, ``.local/soak`` by default), the
services' output going to ``soak.log`` there. Then it sends a
mix of reads (hot documents, cached queries, derived series, one uncached query in ten) at
``--rate`` requests per second from ``--clients`` keep-alive clients for ``--seconds``,
sampling every ``--every`` seconds each api worker's resident memory (RSS) and open file
descriptors, the requests sent and failed (no complete 2xx/304 answer), and the api's own
count of 5xx answers (``/metrics``). It prints the samples as it goes and, at the end, each
figure when the load started, one sample period later (the workers warm: documents in memory,
pools open) and at the end.

Defaults: 600 s at 500 req/s, 32 clients; ``SOAK_SECONDS``, ``SOAK_RATE``, ``SOAK_CLIENTS``
override them, and so do the flags. It reports; it exits 1 only when requests failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs (types-psutil) in the venv
from prometheus_client.parser import text_string_to_metric_families

from devstack.load import Load, Unique
from devstack.procs import free_port
from devstack.run import Stack, StartupError, api_metrics_url, start

PATHS: list[str | Unique] = [
    "/v1/us/current.json",
    "/covid-stats",
    "/v1/states/current.json",
    "/v1/states/ca/daily.json",
    "/v1/states/ny/current.csv",
    "/v1/states/daily.json?states=ca,ny&lastdays=14",
    "/v1/us/daily.json?fields=date,positive,death&lastdays=30",
    "/v1/states/tx/derived.json",
    "/v1/status.json",
    Unique("uncached query", lambda n: f"/v1/us/daily.json?lastdays={n % 10000 + 1}"),
]


@dataclass(frozen=True)
class Worker:
    pid: int
    rss: int  # bytes
    fds: int


@dataclass(frozen=True)
class Sample:
    elapsed: float
    sent: int
    failed: int
    server_errors: float  # the api's count of 5xx answers
    workers: tuple[Worker, ...]


def _workers(master: int) -> tuple[Worker, ...]:
    found = []
    for child in psutil.Process(master).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(Worker(child.pid, child.memory_info().rss, child.num_fds()))
    return tuple(sorted(found, key=lambda w: w.pid))


def _server_errors(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "covid_stats_api_requests_total"
        and sample.labels.get("status", "").startswith("5")
    )


def _sample(load: Load, metrics_url: str, master: int, began: float) -> Sample:
    counts = load.counts()
    return Sample(
        time.monotonic() - began,
        counts.get("ok", 0) + counts.get("failed", 0),
        counts.get("failed", 0),
        _server_errors(metrics_url),
        _workers(master),
    )


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _line(sample: Sample) -> str:
    workers = ", ".join(f"pid {w.pid}: {_mb(w.rss)} {w.fds} fds" for w in sample.workers)
    return (
        f"soak | {sample.elapsed:6.0f} s  sent {sample.sent:>8}  failed {sample.failed:>4}  "
        f"api 5xx {sample.server_errors:>4.0f}  workers: {workers}"
    )


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(samples: list[Sample], load: Load, seconds: float, rate: float) -> str:
    """The summary: requests, latencies, and the figures at the start (the load's start and
    one sample later, warm) and at the end."""
    first, last = samples[0], samples[-1]
    columns = [first, samples[1] if len(samples) > 2 else first, last]
    latencies = load.latencies()
    counts = load.counts()
    failures = {k: v for k, v in counts.items() if k not in ("ok", "failed") and k[0] != "2"}
    failures.pop("304", None)
    lines = [
        f"soak: {seconds:.0f} s at {rate:g} req/s requested, {last.sent} requests sent "
        f"({last.sent / max(last.elapsed, 1e-9):.0f} req/s achieved), {last.failed} failed"
        + (f" {failures}" if failures else ""),
        f"latency: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.0f} ms"
        if latencies
        else "latency: no request finished",
        f"{'':20}" + "".join(f"{f'at {c.elapsed:.0f} s':>24}" for c in columns),
    ]

    def cell(sample: Sample, pid: int) -> str:
        found = next((w for w in sample.workers if w.pid == pid), None)
        return "(not running)" if found is None else f"{_mb(found.rss)}, {found.fds} fds"

    for pid in sorted({w.pid for c in columns for w in c.workers}):
        lines.append(f"{f'api worker {pid}':20}" + "".join(f"{cell(c, pid):>24}" for c in columns))
    lines.append(f"{'sent':20}" + "".join(f"{c.sent:>24}" for c in columns))
    lines.append(f"{'failed':20}" + "".join(f"{c.failed:>24}" for c in columns))
    lines.append(f"{'api 5xx answers':20}" + "".join(f"{c.server_errors:>24.0f}" for c in columns))
    return "\n".join(lines)


def soak(seconds: float, rate: float, clients: int, every: float, state_dir: Path) -> int:
    log_path = state_dir / "soak.log"
    env = dict(os.environ)
    env.setdefault("API_PORT", str(free_port()))
    env.setdefault("API_METRICS_PORT", str(free_port()))
    stack = Stack(env=env)
    print(f"soak | starting the system (its output goes to {log_path})", flush=True)
    with log_path.open("a") as log:
        try:
            with contextlib.redirect_stdout(log):
                api = start(stack, state_dir)
            master = next(c for c in stack.children if c.name == "api").proc.pid
            metrics = api_metrics_url(stack.env)
            print(
                f"soak | {api}: {seconds:g} s at {rate:g} req/s from {clients} clients",
                flush=True,
            )
            with Load(
                api, PATHS, clients=clients, rate=rate, keep_outcomes=False, timeout=30
            ) as load:
                began = time.monotonic()
                first = _sample(load, metrics, master, began)
                print(_line(first), flush=True)
                samples = [first]
                deadline = began + seconds
                while (now := time.monotonic()) < deadline:
                    time.sleep(min(every, deadline - now))
                    samples.append(_sample(load, metrics, master, began))
                    print(_line(samples[-1]), flush=True)
            print("\n" + report(samples, load, seconds, rate), flush=True)
            return 1 if samples[-1].failed else 0
        except (StartupError, TimeoutError, RuntimeError) as exc:
            print(f"soak | failed: {exc} (see {log_path})", file=sys.stderr, flush=True)
            return 2
        finally:
            with contextlib.redirect_stdout(log):
                stack.stop()
            for child in stack.children:  # their last lines, before the log closes
                if child._pump is not None:
                    child._pump.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack.soak", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600"))
    )
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "500")))
    parser.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", "32")))
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("DEVSTACK_STATE_DIR", ".local")) / "soak",
        help="where the servers' data and soak.log go (default .local/soak, git-ignored)",
    )
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    return soak(args.seconds, args.rate, args.clients, args.every, state_dir)


if __name__ == "__main__":
    sys.exit(main())
