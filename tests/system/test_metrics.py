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
from urllib.parse import urlsplit

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the venv
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from covid_stats_api import metrics as api_metrics
from covid_stats_api.core.config import Settings
from devstack.procs import free_port, wait_until
from stats_fetcher import metrics as fetcher_metrics
from support import (
    ApiUrl,
    Fetcher,
    check_error_body,
    defined_metrics,
    metric_names,
    metric_samples,
    spawn,
    start_api,
)

ApiFactory = Callable[[dict[str, str]], ApiUrl]


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
def loaded(published_env: dict[str, str], api_factory: ApiFactory) -> ApiUrl:
    """The api over the session's published data (``published_env``)."""
    return api_factory(published_env)


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


HISTOGRAM_COUNT = ("/v1/us/current.{fmt}", 57)


def _all_counted(text: str) -> bool:
    """Every request of ``COUNTS`` is in the counter and the histogram (or more)."""
    route, count = HISTOGRAM_COUNT
    return (
        all(
            _sample(text, "covid_stats_api_requests_total", route=r, status=s) >= n
            for r, s, n in EXPECTED
        )
        and _sample(text, "covid_stats_api_request_duration_seconds_count", route=route) >= count
    )


def test_the_request_counter_is_exact_whatever_worker_answers(loaded: ApiUrl) -> None:
    _send(loaded, COUNTS)
    # A request is counted once its answer is written (its duration includes the write), so
    # the client can read the last answers before their worker has counted them: wait until
    # every request is counted, then the counts must be exact, scrape after scrape.
    wait_until(
        lambda: _all_counted(httpx.get(loaded.metrics).text), 10, what="every request counted"
    )
    for _ in range(6):  # the master's listener adds up every worker's samples, every time
        text = httpx.get(loaded.metrics).text
        for route, status, count in EXPECTED:
            got = _sample(text, "covid_stats_api_requests_total", route=route, status=status)
            assert got == count, (route, status)
        route, count = HISTOGRAM_COUNT
        histogram = _sample(text, "covid_stats_api_request_duration_seconds_count", route=route)
        assert histogram == count
        assert _sample(text, "covid_stats_api_cache_lookups_total", tier="memory", result="hit") > 0
        assert _sample(text, "covid_stats_api_build_info") == 1
        # Both workers write hot documents' answers themselves (the adapter's start-up
        # guard found every hook of uvicorn's it relies on); the counts above include them.
        assert _sample(text, "covid_stats_api_direct_answers_enabled") == 1
    wait_until(
        lambda: _sample(httpx.get(loaded.metrics).text, "covid_stats_api_snapshot_id") >= 1,
        10,
        what="the snapshot gauge",
    )


def test_metrics_are_served_on_their_own_port_only(
    published_env: dict[str, str], tmp_path: Path
) -> None:
    """/metrics is the master's, on API_METRICS_PORT: the traffic port (what an Ingress
    publishes) answers it 404 in the error shape, the metrics port serves nothing else, a
    scrape is not a request, and no worker holds the metrics port open."""
    master, api = start_api(published_env, tmp_path)
    try:
        _send(api, {"/v1/us/current.json": 3})
        metrics_path = urlsplit(api.metrics).path
        on_traffic_port = httpx.get(f"{api}{metrics_path}")
        assert on_traffic_port.status_code == 404
        check_error_body(on_traffic_port.content, 404, "not_found")

        metrics_base = api.metrics.removesuffix(metrics_path)
        for path in ("/", "/v1/us/current.json", f"{metrics_path}/x"):
            elsewhere = httpx.get(f"{metrics_base}{path}")
            assert elsewhere.status_code == 404, path
            check_error_body(elsewhere.content, 404, "not_found")

        scraped = httpx.get(api.metrics)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        text = httpx.get(api.metrics).text
        routes = {
            dict(labels)["route"]
            for (sample, labels), _ in metric_samples(text).items()
            if sample == "covid_stats_api_requests_total"
        }
        assert metrics_path not in routes  # a scrape costs the workers nothing, counts nothing
        assert _sample(text, "covid_stats_api_requests_total", route="unmatched") == 1

        port = urlsplit(api.metrics).port
        assert _listens_on(master.proc.pid, port)
        workers = psutil.Process(master.proc.pid).children()
        assert len(workers) == 2
        assert not any(_listens_on(worker.pid, port) for worker in workers)
    finally:
        master.stop()


def _listens_on(pid: int, port: int | None) -> bool:
    """Whether the process has a socket bound to ``port`` (listening or not: a worker that
    inherited the master's listening socket would show it too)."""
    return any(c.laddr and c.laddr.port == port for c in psutil.Process(pid).net_connections())


def test_the_metrics_port_is_checked_and_can_be_off(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """The two ports must differ (a clear error at start, not a bind race); 0 turns the
    metrics listener off while the api serves as usual."""
    with pytest.raises(ValidationError, match="API_METRICS_PORT must differ from API_PORT"):
        Settings(api_port=8123, api_metrics_port=8123)
    assert Settings().api_metrics_port != Settings().api_port

    master, api = start_api({**service_env, "API_METRICS_PORT": "0"}, tmp_path, workers=1)
    try:
        assert httpx.get(f"{api}/healthz").status_code == 200
        listening = {
            c.laddr.port
            for c in psutil.Process(master.proc.pid).net_connections()
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {urlsplit(api).port}
    finally:
        master.stop()


def test_both_services_metrics_pass_promtool(
    loaded: ApiUrl, published_env: dict[str, str], fetcher_factory: Any
) -> None:
    promtool = _need("promtool")
    fetcher: Fetcher = fetcher_factory(published_env)
    for url in (loaded.metrics, f"{fetcher.url}/metrics"):
        text = httpx.get(url).text
        assert text
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_scraped_series_is_one_its_metrics_module_defines(
    loaded: ApiUrl, published_env: dict[str, str], fetcher_factory: Any
) -> None:
    """Every series each service exports is one its metrics module defines, by the names the
    tests derive from it (``support.metric_names``: the alert and dashboard tests' list)."""
    fetcher: Fetcher = fetcher_factory(published_env)
    _send(loaded, {"/v1/us/current.json": 1, "/nope": 1})
    for url, module in ((loaded.metrics, api_metrics), (f"{fetcher.url}/metrics", fetcher_metrics)):
        scraped = {
            sample.name
            for family in text_string_to_metric_families(httpx.get(url).text)
            for sample in family.samples
            if sample.name.startswith("covid_stats_")
        }
        assert scraped, url
        assert scraped - metric_names(module) == set(), url
    assert "covid_stats_api_requests" in defined_metrics(api_metrics)


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
    loaded: ApiUrl,
    published_env: dict[str, str],
    fetcher_factory: Any,
    prometheus: Callable[[list[str], list[str]], str],
) -> None:
    fetcher: Fetcher = fetcher_factory(published_env)
    _send(loaded, {"/v1/us/current.json": 37})
    server = prometheus([urlsplit(loaded.metrics).netloc], [urlsplit(fetcher.url).netloc])
    query = 'sum(covid_stats_api_requests_total{route="/v1/us/current.{fmt}",status="200"})'
    # Prometheus takes a few seconds before its first scrape: wait on the answer.
    wait_until(lambda: _query(server, query) == 37, 60, what="Prometheus to see 37 requests")
    wait_until(
        lambda: _query(server, 'sum(up{job=~"covid-stats-.*"})') == 2, 30, what="both targets up"
    )
    assert _query(server, "max(covid_stats_fetcher_leader)") == 1
