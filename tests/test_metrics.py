"""Prometheus metrics that stay exact under gunicorn's workers, checked with real tools: the
api under gunicorn (2 workers), the fetcher, promtool and a real Prometheus server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.procs import free_port, wait_until
from support import Fetcher, metric_samples, run_fetcher, spawn

ApiFactory = Callable[[dict[str, str]], str]


def _need(tool: str) -> str:
    """The tool's path; a skip outside CI (developers need only Python), a failure in CI."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed: run .ci/install-tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in metric_samples(text).items()
        if sample == name and wanted <= sample_labels
    )


@pytest.fixture
def loaded(service_env: dict[str, str], api_factory: ApiFactory) -> str:
    assert run_fetcher("refresh-once", service_env).returncode == 0
    return api_factory(service_env)


def _send(api: str, counts: dict[str, int]) -> None:
    for path, count in counts.items():
        for _ in range(count):
            httpx.get(f"{api}{path}")  # a new connection each: both workers answer


COUNTS = {
    "/v1/us/current.json": 57,
    "/v1/states/CA/current.json": 21,
    "/v1/states/zz/current.json": 13,
    "/nope": 5,
}
EXPECTED = [
    ("/v1/us/current.{fmt}", "200", 57),
    ("/v1/states/{state}/current.{fmt}", "200", 21),
    ("/v1/states/{state}/current.{fmt}", "404", 13),
    ("unmatched", "404", 5),
]


def test_the_request_counter_is_exact_whatever_worker_answers(loaded: str) -> None:
    _send(loaded, COUNTS)
    for _ in range(6):  # scrapes land on either worker: each must add up all of them
        text = httpx.get(f"{loaded}/metrics").text
        for route, status, count in EXPECTED:
            got = _sample(text, "covid_stats_api_requests_total", route=route, status=status)
            assert got == count, (route, status)
        histogram = _sample(
            text, "covid_stats_api_request_duration_seconds_count", route="/v1/us/current.{fmt}"
        )
        assert histogram == 57
        assert _sample(text, "covid_stats_api_cache_lookups_total", tier="memory", result="hit") > 0
        assert _sample(text, "covid_stats_api_build_info") == 1
    wait_until(
        lambda: _sample(httpx.get(f"{loaded}/metrics").text, "covid_stats_api_snapshot_id") >= 1,
        10,
        what="the snapshot gauge",
    )


def test_both_services_metrics_pass_promtool(
    loaded: str, service_env: dict[str, str], fetcher_factory: Any
) -> None:
    promtool = _need("promtool")
    fetcher: Fetcher = fetcher_factory(service_env)
    for url in (f"{loaded}/metrics", f"{fetcher.url}/metrics"):
        text = httpx.get(url).text
        assert text
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str], list[str]], str]]:
    binary = _need("prometheus")
    started = []

    def start(api_targets: list[str], fetcher_targets: list[str]) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        jobs = {"covid-stats-api": api_targets, "covid-stats-fetcher": fetcher_targets}
        config.write_text(  # JSON is YAML
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": job, "static_configs": [{"targets": targets}]}
                        for job, targets in jobs.items()
                    ],
                }
            )
        )
        process = spawn(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            dict(os.environ),
            tmp_path,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/-/ready", timeout=60)
        return url

    yield start
    for process in started:
        process.stop()


def _query(prometheus: str, expr: str) -> float | None:
    result = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()
    values = result["data"]["result"]
    return float(values[0]["value"][1]) if values else None


def test_a_real_prometheus_scrapes_the_exact_count(
    loaded: str,
    service_env: dict[str, str],
    fetcher_factory: Any,
    prometheus: Callable[[list[str], list[str]], str],
) -> None:
    fetcher: Fetcher = fetcher_factory(service_env)
    _send(loaded, {"/v1/us/current.json": 37})
    server = prometheus([loaded.removeprefix("http://")], [fetcher.url.removeprefix("http://")])
    query = 'sum(covid_stats_api_requests_total{route="/v1/us/current.{fmt}",status="200"})'
    # Prometheus takes a few seconds before its first scrape: wait on the answer.
    wait_until(lambda: _query(server, query) == 37, 60, what="Prometheus to see 37 requests")
    wait_until(
        lambda: _query(server, 'sum(up{job=~"covid-stats-.*"})') == 2, 30, what="both targets up"
    )
    assert _query(server, "max(covid_stats_fetcher_leader)") == 1
