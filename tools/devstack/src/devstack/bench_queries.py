"""``make bench-queries``: distinct hostile questions against the whole system, and what they
cost Redis, the workers and the hot documents.

Starts everything as ``make run`` does (``devstack.run``, in ``.local/bench-queries``, the
services' output in ``bench-queries.log`` there), then:

1. before: Redis ``used_memory``, the bytes the query answers are counted for (the budget's
   meter, ``QUERY_CACHE_MAX_BYTES``), each worker's RSS, and the p99 of a hot document
   (wrk on ``/v1/states/current.json``) under two loads, saturating and paced (``LOADS``);
2. during: ``--queries`` distinct questions (default 10,000; each one's text never seen
   before) from ``--clients`` clients: random ``lastdays`` (1 to 10,000), ``from``/``to``
   years from 1990 to 2030, sorts by one to three keys, states in any case and order,
   projections, on the daily series, the states lists and the derived series; while wrk
   measures the hot document in back-to-back windows of each load (first, median, max
   p99), and the CPU seconds each part of the system and of the bench spends
   (``CpuMeter``);
3. after: the same figures again, the answers' statuses, and the evictions the budget made.

``--apart`` places the parts as production does, on machines of their own (here all share two
cores): the api (master, workers, computation processes) alone on CPU 0, as an api pod with
its own CPU; wrk on CPU 1, as ``make bench`` pins it; and on CPU 1 too, but only when wrk
leaves it idle (``SCHED_IDLE``), what runs elsewhere in production: PostgreSQL, Redis, the
fetcher, the upstream and the questioning clients. The placement holds for the whole run,
before, during and after, so the three are compared alike. A nice value cannot do this: where
the kernel groups processes by session (autogroup), nice orders them only within a group.
wrk itself runs at a real-time priority (``SCHED_FIFO``, when the system allows it): an
idle-priority neighbour still takes a whole scheduler tick (4 ms at 250 Hz) from a normal
process now and then (traced: PostgreSQL's backends, at idle priority on wrk's CPU, held wrk
off its CPU for more than 3 ms 74 times in 4 s), and that delay is the instrument's, not the
api's (docs/performance.md, "The scheduler's tick").

``--questions-api`` sends the questions to a second api of their own (the same code and
settings, its own gunicorn, workers and computation processes), as the chart's questions
Deployment behind the edge cache takes them (``questions.enabled``: docs/edge-cache.md); with
``--apart`` it runs on CPU 1 at idle priority, with the rest. The hot documents' api then
answers no question.

It reports; it asserts nothing about speed. ``QUERY_CACHE_MAX_BYTES`` and
``QUERY_ANSWER_MAX_BYTES`` from the environment apply (the shipped defaults otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs (types-psutil) in the venv
import redis
from prometheus_client.parser import text_string_to_metric_families

from covid_stats_contract.keys import RedisKeys
from covid_stats_runtime.logs import configure_logging
from devstack.bench_api import wrk
from devstack.procs import free_port, wait_until
from devstack.run import Stack, StartupError, api_metrics_url, spawn_api, start
from devstack.servers import LocalPostgres

HOT = "/v1/states/current.json"
STATES = [
    "AK", "AL", "AR", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "GA", "HI", "IA", "ID", "IL",
    "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MI", "MN", "MO", "MS", "MT", "NC", "ND", "NE",
    "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VA", "VT", "WA", "WI", "WV", "WY",
]  # fmt: skip
FIELDS = ["positive", "negative", "death", "hospitalizedCurrently", "totalTestResults"]
INCREASES = ["positiveIncrease", "deathIncrease", "totalTestResultsIncrease"]


def _question(rng: random.Random) -> str:
    """One hostile question: a path and parameters drawn at random."""
    kind = rng.random()
    params: list[str] = []
    if kind < 0.15:
        path = "/v1/us/daily.json"
    elif kind < 0.25:
        path = rng.choice(["/v1/states/current.json", "/v1/states/info.csv"])
        params.append("states=" + ",".join(rng.sample(STATES, rng.randint(1, 12))))
    elif kind < 0.35:
        state = rng.choice(STATES).lower()
        path = rng.choice(["/v1/us/derived.json", f"/v1/states/{state}/derived.json"])
    elif kind < 0.5:
        path = f"/v1/states/{rng.choice(STATES).lower()}/daily.{rng.choice(['json', 'csv'])}"
    else:
        path = f"/v1/states/daily.{rng.choice(['json', 'json', 'csv'])}"
        if rng.random() < 0.8:
            chosen = rng.sample(STATES, rng.randint(1, 6))
            codes = [c.lower() if rng.random() < 0.5 else c for c in chosen]
            params.append("states=" + ",".join(codes))
    if "derived" not in path and "current" not in path and "info" not in path:
        roll = rng.random()
        if roll < 0.4:
            params.append(f"lastdays={rng.randint(1, 10000)}")
        elif roll < 0.8:
            first = rng.randint(1990, 2030)
            params.append(f"from={first}{rng.choice(['0101', '0315', '0601', '0901'])}")
            if rng.random() < 0.5:
                params.append(f"to={rng.randint(first, 2030)}1231")
    elif "derived" in path and rng.random() < 0.7:
        params.append(f"lastdays={rng.randint(1, 10000)}")
    if "derived" not in path and "info" not in path and rng.random() < 0.6:
        keys = rng.sample(FIELDS + INCREASES, rng.randint(1, 3))
        params.append("sort=" + ",".join(("-" if rng.random() < 0.5 else "") + k for k in keys))
    if rng.random() < 0.3 and "info" not in path:
        names = ["date", *rng.sample(INCREASES if "derived" in path else FIELDS, 2)]
        if "derived" in path:
            names = ["date", "positiveIncreaseAvg7d", "testPositivity7d"]
        params.append("fields=" + ",".join(names))
    return path + ("?" + "&".join(params) if params else "")


def questions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - reproducible load, not secrets
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen.setdefault(_question(rng), None)
    return list(seen)


async def _ask(base: str, paths: list[str], clients: int) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    queue = iter(paths)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for path in queue:
                response = await client.get(path, headers={"Accept-Encoding": "gzip"})
                statuses[response.status_code] += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    return statuses


def _rss(master: int) -> list[int]:
    out = []
    for child in psutil.Process(master).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(child.memory_info().rss)
    return sorted(out)


class CpuMeter:
    """CPU seconds (user + system) each part of the system spends from ``start`` to ``stop``:
    the api's workers, their computation processes, PostgreSQL, Redis (``stores``: each
    server's name and pid; its processes are the pid and its children), this process (the
    bench's clients) and the wrk runs it waited for. Processes come and go (gunicorn's
    ``max_requests`` replaces workers, and their PostgreSQL connections with them), so every
    process is sampled twice a second and counted from when it was first seen (from 0 when
    it started meanwhile); what one spends after its last sample is missed."""

    def __init__(self, masters: dict[str, int], stores: dict[str, int]) -> None:
        self.masters = masters
        self.stores = stores
        self._first: dict[tuple[int, float], tuple[str, float]] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._own = os.times()

    def _processes(self) -> Iterator[tuple[str, psutil.Process]]:
        for prefix, master in self.masters.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                for worker in psutil.Process(master).children():
                    yield f"{prefix}api workers", worker
                    with contextlib.suppress(psutil.NoSuchProcess):
                        for child in worker.children(recursive=True):
                            yield f"{prefix}computations", child
        for name, pid in self.stores.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                server = psutil.Process(pid)
                yield name, server
                yield from ((name, c) for c in server.children(recursive=True))

    def _sample(self, first: bool) -> None:
        for part, process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                key = (process.pid, process.create_time())
                spent = float(times.user + times.system)
                self._first.setdefault(key, (part, spent if first else 0.0))
                self._last[key] = spent

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample(first=False)

    def start(self) -> None:
        self._sample(first=True)
        self._own = os.times()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample(first=False)
        parts = dict.fromkeys(
            [
                f"{prefix}{part}"
                for prefix in self.masters
                for part in ("api workers", "computations")
            ]
            + ["postgres", "redis"],
            0.0,
        )
        for key, (part, first) in self._first.items():
            parts[part] += self._last[key] - first
        own = os.times()
        parts["bench clients"] = own.user + own.system - self._own.user - self._own.system
        parts["wrk"] = (
            own.children_user + own.children_system
            - self._own.children_user - self._own.children_system
        )  # fmt: skip
        return parts


def _evictions(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "covid_stats_api_query_answers_evicted_total"
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# How the hot document is loaded while it is measured: as hard as wrk can (32 connections,
# each asking again at once: what the cores have left for it, queueing included) and paced
# (each of the 32 connections waits PACE_MS between answers: a steady load the api answers
# well below its capacity, as a pod serves in production; what a client waits).
PACE_MS = 10
LOADS = {"saturating": 0, "paced": PACE_MS}


def _hot_p99(
    base: str, seconds: int, connections: int, pace_ms: int = 0, realtime: bool = False
) -> tuple[float, float]:
    got = wrk(
        f"{base}{HOT}", connections, seconds, ["Accept-Encoding: gzip"], False, pace_ms=pace_ms,
        realtime=realtime,
    )  # fmt: skip
    return got["p99"] * 1000, got["rps"]


def _realtime_allowed() -> bool:
    """Whether this process may start wrk at a real-time priority (``CAP_SYS_NICE``, or an
    ``RLIMIT_RTPRIO`` that allows it)."""
    try:
        return subprocess.run(["chrt", "--fifo", "1", "true"], check=False).returncode == 0
    except OSError:
        return False


def _p99_line(
    load: str, seconds: int, before: tuple[float, float], during: list[tuple[float, float]],
    after: tuple[float, float],
) -> str:  # fmt: skip
    p99s = sorted(p99 for p99, _ in during)
    mean_rps = sum(rps for _, rps in during) / len(during) if during else float("nan")
    spread = (
        f"first {during[0][0]:.1f}, median {p99s[len(p99s) // 2]:.1f}, max {p99s[-1]:.1f} ms"
        if during
        else "no window"
    )
    return (
        f"hot p99 {load:<10} before {before[0]:.1f} ms ({before[1]:.0f} req/s); during"
        f" ({len(during)} windows of {seconds} s) {spread} ({mean_rps:.0f} req/s on average);"
        f" after {after[0]:.1f} ms ({after[1]:.0f} req/s)"
    )


API_CPU, OTHERS_CPU = 0, 1
# ``--questions-api``: the second api's name among the stack's children (and in the log).
QUESTIONS_API = "questions-api"


def _place(pids: list[int], cpu: int, idle: bool) -> None:
    """Every thread of ``pids`` and of their descendants on ``cpu``; with ``idle``, run only
    when that CPU has nothing else to run (``SCHED_IDLE``). Processes they start later (a
    replaced worker, a computation process, a PostgreSQL connection) inherit both."""
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    for thread in process.threads():
                        with contextlib.suppress(ProcessLookupError):
                            os.sched_setaffinity(thread.id, {cpu})
                            if idle:
                                os.sched_setscheduler(thread.id, os.SCHED_IDLE, os.sched_param(0))


def _apart(stack: Stack, master: int) -> None:
    """``--apart``: the api alone on ``API_CPU``; this process (its wrk runs inherit it) on
    ``OTHERS_CPU``; everything else there, idle-only (the questioning clients: ``_ask``)."""
    others = [server.pid for server in stack.servers]
    others += [child.proc.pid for child in stack.children if child.proc.pid != master]
    _place([master], API_CPU, idle=False)
    _place(others, OTHERS_CPU, idle=True)
    os.sched_setaffinity(0, {OTHERS_CPU})  # this thread; the threads it starts inherit it


def bench(
    state_dir: Path, count: int, clients: int, seconds: int, seed: int, apart: bool,
    questions_api: bool,
) -> int:  # fmt: skip
    log_path = state_dir / "bench-queries.log"
    env = dict(os.environ)
    env.setdefault("API_PORT", str(free_port()))
    env.setdefault("API_METRICS_PORT", str(free_port()))
    env.setdefault("LOG_LEVEL", "WARNING")
    stack = Stack(env=env)
    print(f"bench-queries | starting the system (its output goes to {log_path})", flush=True)
    with log_path.open("a") as log:
        try:
            with contextlib.redirect_stdout(log):
                base = start(stack, state_dir)
            master = next(c for c in stack.children if c.name == "api").proc.pid
            # The questions' api (``--questions-api``), else the hot documents' api; their
            # masters, by the prefix their parts are reported under.
            asked_base, masters, metrics_urls = base, {"": master}, [api_metrics_url(stack.env)]
            if questions_api:
                questions_env = {
                    **stack.env,
                    "API_PORT": str(free_port()),
                    "API_METRICS_PORT": str(free_port()),
                }
                with contextlib.redirect_stdout(log):
                    asked_base = spawn_api(stack, QUESTIONS_API, questions_env)
                masters["questions "] = next(
                    c for c in stack.children if c.name == QUESTIONS_API
                ).proc.pid
                metrics_urls.append(api_metrics_url(questions_env))
            realtime = False
            if apart:
                _apart(stack, master)
                realtime = _realtime_allowed()
                if not realtime:
                    print(
                        "bench-queries | wrk at normal priority: chrt --fifo was refused"
                        " (needs CAP_SYS_NICE); its neighbours' ticks count in its figures",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
            client = redis.Redis.from_url(stack.env["REDIS_URL"])
            keys = RedisKeys(stack.env.get("REDIS_KEY_PREFIX", "covid-stats"))
            wait_until(
                lambda: client.get(keys.current_snapshot) is not None,
                300,
                what="the first snapshot",
            )

            def figures() -> tuple[int, int, dict[str, list[int]]]:
                memory = client.info("memory")
                return (
                    int(memory["used_memory"]),
                    int(client.get(keys.query_used) or 0),
                    {prefix: _rss(pid) for prefix, pid in masters.items()},
                )

            paths = questions(count, seed)
            for path in (HOT, "/v1/states/daily.json?states=ca&lastdays=7"):
                httpx.get(f"{base}{path}", timeout=30)
            # warm-up: the connections' and workers' first requests
            _hot_p99(base, 2, 32, realtime=realtime)
            before = figures()
            hot_before = {
                load: _hot_p99(base, seconds, 32, pace, realtime) for load, pace in LOADS.items()
            }
            during: dict[str, list[tuple[float, float]]] = {load: [] for load in LOADS}
            asked = threading.Event()

            def measure_during() -> None:
                # Windows of ``seconds`` back to back while the questions last: the first
                # ones meet the computation processes starting, the later ones steady state.
                time.sleep(2)  # the questions are under way
                while not asked.is_set():
                    for load, pace in LOADS.items():
                        if not asked.is_set():
                            during[load].append(_hot_p99(base, seconds, 32, pace, realtime))

            thread = threading.Thread(target=measure_during)
            stores = {
                "postgres" if isinstance(server, LocalPostgres) else "redis": server.pid
                for server in stack.servers
            }
            meter = CpuMeter(masters, stores)
            meter.start()
            began = time.monotonic()
            thread.start()
            try:
                if apart:  # the questioning clients: on other machines in production
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                statuses = asyncio.run(_ask(asked_base, paths, clients))
            finally:
                asked.set()
                if apart:
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            took = time.monotonic() - began
            thread.join()
            cpu = meter.stop()
            after = figures()
            hot_after = {
                load: _hot_p99(base, seconds, 32, pace, realtime) for load, pace in LOADS.items()
            }
            answers = sum(
                1
                for key in client.scan_iter(match=keys.query("*", "*"), count=1000)
                if not key.endswith(b":fill")
            )
            print(
                "\n".join(
                    [
                        f"bench-queries | {count} distinct questions from {clients} clients in"
                        f" {took:.0f} s ({count / took:.0f}/s); statuses:"
                        f" {dict(sorted(statuses.items()))}; "
                        + ("the api apart on CPU 0" if apart else "every part on every CPU")
                        + (", wrk at a real-time priority" if realtime else "")
                        + (", the questions to an api of their own" if questions_api else ""),
                        f"Redis used_memory      before {_mib(before[0])}, after"
                        f" {_mib(after[0])} (+{_mib(after[0] - before[0])})",
                        f"answers counted bytes  before {_mib(before[1])}, after"
                        f" {_mib(after[1])}; {answers} answer keys; evicted"
                        f" {sum(_evictions(url) for url in metrics_urls):.0f}",
                        *(
                            f"{prefix + 'worker RSS':<22} before "
                            + ", ".join(_mib(r) for r in before[2][prefix])
                            + "; after "
                            + ", ".join(_mib(r) for r in after[2][prefix])
                            for prefix in masters
                        ),
                        *(
                            _p99_line(
                                load, seconds, hot_before[load], during[load], hot_after[load]
                            )
                            for load in LOADS
                        ),
                        "CPU seconds during    "
                        + ", ".join(f"{part} {spent:.0f}" for part, spent in cpu.items()),
                    ]
                ),
                flush=True,
            )
            return 0
        except (StartupError, TimeoutError, RuntimeError) as exc:
            print(f"bench-queries | failed: {exc} (see {log_path})", file=sys.stderr, flush=True)
            return 2
        finally:
            with contextlib.redirect_stdout(log):
                stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-queries", description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10_000, help="distinct questions")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (default 5)")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--apart",
        action="store_true",
        help="the api alone on CPU 0, wrk on CPU 1, and PostgreSQL, Redis and the questioning"
        " clients on CPU 1 only when wrk leaves it idle: as on machines of their own"
        " (default: every part on every CPU)",
    )
    parser.add_argument(
        "--questions-api",
        action="store_true",
        help="the questions to a second api of their own, as the chart's questions Deployment"
        " takes them (with --apart: on CPU 1, idle-only); the hot documents' api answers none",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("DEVSTACK_STATE_DIR", ".local")) / "bench-queries",
        help="where the servers' data and the log go (default .local/bench-queries)",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian/Ubuntu)", file=sys.stderr)
        return 2
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if args.apart and {API_CPU, OTHERS_CPU} - os.sched_getaffinity(0):
        print("--apart needs CPUs 0 and 1", file=sys.stderr)
        return 2
    return bench(
        state_dir, args.queries, args.clients, args.seconds, args.seed, args.apart,
        args.questions_api,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
