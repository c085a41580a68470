"""`make run`'s supervisor (``python -m devstack run``): everything starts, serves the
upstream's data, stops on Ctrl-C leaving no process, and starts cleanly after a crash."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from devstack.procs import free_port, is_alive, wait_until
from support import RECENT_DAYS, Process, clean_env, python_module, scratch_dir, spawn


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with scratch_dir("run") as d:
        yield Path(d)


def _start(state_dir: Path, log_dir: Path, **env: str) -> tuple[Process, str]:
    port = free_port()
    process = spawn(
        "devstack",
        python_module("devstack", "run", "--state-dir", str(state_dir)),
        # The replay upstream serves the dataset's last days (as the `recent` tests' does):
        # what is tested is the supervisor, not the first refresh of the whole archive.
        clean_env(
            API_PORT=str(port),
            API_METRICS_PORT=str(free_port()),
            REPLAY_LAST_DAYS=str(RECENT_DAYS),
            **env,
        ),
        log_dir,
    )
    base = f"http://127.0.0.1:{port}"
    process.wait_http(f"{base}/covid-stats", timeout=120)
    wait_until(lambda: "Press Ctrl-C to stop" in process.output(), 30, what="the URLs banner")
    return process, base


def _descendants(process: Process) -> list[int]:
    return [p.pid for p in psutil.Process(process.proc.pid).children(recursive=True)]


def _wait_all_gone(pids: list[int]) -> None:
    wait_until(
        lambda: not any(is_alive(pid) for pid in pids),
        timeout=60,
        what=f"processes {[p for p in pids if is_alive(p)]} to exit",
    )


def test_make_run_serves_then_ctrl_c_leaves_no_process(state_dir: Path, tmp_path: Path) -> None:
    process, base = _start(state_dir, tmp_path, WEB_CONCURRENCY="3")
    output = process.output()
    upstream = re.search(r"upstream: (http://\S+)", output)
    assert upstream, output
    us = httpx.get(f"{upstream[1]}/v1/us/current.json").content
    # REPLAY_LAST_DAYS reached the replay upstream: the last days only.
    assert len(httpx.get(f"{upstream[1]}/v1/us/daily.json").json()) == RECENT_DAYS
    # WEB_CONCURRENCY reaches gunicorn: a master with 3 workers. The master forks them one
    # after another, with a random pause of up to 0.1 s between forks (gunicorn's
    # Arbiter.spawn_workers), and a preloaded worker serves within milliseconds of its fork:
    # the first may answer before the last is forked, so the count is waited for.
    masters = [
        p
        for p in psutil.Process(process.proc.pid).children()
        if "gunicorn" in " ".join(p.cmdline())
    ]
    assert len(masters) == 1
    wait_until(lambda: len(masters[0].children()) >= 3, 30, what="the master's 3 workers")
    assert len(masters[0].children()) == 3

    # Served from PostgreSQL between the fetcher's store and its publish, then from Redis.
    wait_until(
        lambda: all(
            httpx.get(f"{base}/covid-stats").json()["source"] == "cache" for _ in range(10)
        ),
        30,
        what="every worker to serve the snapshot in Redis",
    )
    assert httpx.get(f"{base}/covid-stats").json() == {"source": "cache", "data": json.loads(us)}
    assert f"{base}/covid-stats" in output  # the URLs are printed
    metrics = re.search(r"metrics: +(http://\S+)", output)
    assert metrics, output
    assert "covid_stats_api_requests_total" in httpx.get(metrics[1]).text

    children = _descendants(process)
    assert len(children) >= 6  # redis, postgres (+ backends), upstream, fetcher, api (+ workers)
    process.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert process.proc.wait(timeout=60) == 0
    _wait_all_gone(children)
    assert "devstack | stopped" in process.output()


def test_make_run_starts_cleanly_after_a_crash(state_dir: Path, tmp_path: Path) -> None:
    process, _ = _start(state_dir, tmp_path)
    children = _descendants(process)
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(timeout=10)
    _wait_all_gone(children)  # the children die with their supervisor

    again, base = _start(state_dir, tmp_path)
    assert httpx.get(f"{base}/v1/states/current.json").status_code == 200
    again.proc.send_signal(signal.SIGINT)
    assert again.proc.wait(timeout=60) == 0


def test_edge_cache_puts_varnish_in_front_and_the_fetcher_purges_it(
    state_dir: Path, tmp_path: Path
) -> None:
    edge_port, purge_port = free_port(), free_port()
    process, base = _start(
        state_dir,
        tmp_path,
        EDGE_CACHE="1",
        EDGE_CACHE_PORT=str(edge_port),
        EDGE_CACHE_PURGE_PORT=str(purge_port),
    )
    output = process.output()
    printed = re.search(r"edge: +(http://\S+)/v1/us/current.json", output)
    assert printed, output
    edge = printed[1]
    assert edge == f"http://127.0.0.1:{edge_port}"
    origin = httpx.get(f"{base}/v1/us/current.json")
    first, second = (httpx.get(f"{edge}/v1/us/current.json") for _ in range(2))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.content == origin.content
    assert len(second.headers["x-varnish"].split()) == 2  # kept: a hit
    # the fetcher purges Varnish's purge listener
    fetchers = [
        p
        for p in psutil.Process(process.proc.pid).children()
        if "stats_fetcher" in " ".join(p.cmdline())
    ]
    assert len(fetchers) == 1
    assert fetchers[0].environ()["PURGE_URLS"] == f"http://127.0.0.1:{purge_port}/"
    assert f"http://127.0.0.1:{purge_port}/" in output

    children = _descendants(process)
    names = set()
    for pid in children:
        try:
            names.add(psutil.Process(pid).name())
        except psutil.NoSuchProcess:  # a PostgreSQL backend that came and went
            continue
    assert "varnishd" in names, names  # and it goes with the rest
    process.proc.send_signal(signal.SIGINT)
    assert process.proc.wait(timeout=60) == 0
    _wait_all_gone(children)
