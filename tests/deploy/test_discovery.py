"""Discovery: a Prometheus set up as kube-prometheus-stack's finds the chart's targets and rules
when the chart is installed with the documented values, and nothing with the defaults.

What is simulated, and why: there is no Kubernetes API server here, so no prometheus-operator
to watch ServiceMonitors and PrometheusRules. The test does the operator's part: it selects
the rendered ServiceMonitors and PrometheusRules with kube-prometheus-stack's default
selectors (`serviceMonitorSelector` and `ruleSelector`: `matchLabels: {release: <its release
name>}`, every namespace), translates each selected ServiceMonitor endpoint into the scrape
config the operator would generate (job from the Service name or the endpoint's relabeling,
path, interval, timeout; the target is the Service's target port in the pod behind it, which
the endpoints controller would list) and loads the selected PrometheusRules' groups as rule
files. Everything after the selection is real: Debian's `prometheus` binary scrapes the api and
the fetcher, run here with exactly the commands, environment and ports of their rendered
containers (as the contract test runs them), and evaluates the rules.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    COMPONENT_LABEL,
    RELEASE,
    Rendered,
    container_port,
    local_run,
    operator_job,
    probe_url,
    probes,
    render,
    run,
    selected_service,
    wait_200,
)
from devstack.procs import free_port, wait_until
from pods import start_prometheus
from support import Process, Upstream, spawn

# kube-prometheus-stack installed as `helm install kps prometheus-community/kube-prometheus-stack`:
# its Prometheus selects ServiceMonitors and PrometheusRules labelled with its release name.
KPS_RELEASE = "kps"
KPS_SELECTOR = {"release": KPS_RELEASE}
MONITORING_ON = {
    "metrics.serviceMonitor.enabled": True,
    "metrics.prometheusRule.enabled": True,
}
# The documented values (chart README quickstart, docs/deployment.md "Discovery").
DOCUMENTED = {
    **MONITORING_ON,
    "metrics.serviceMonitor.labels": KPS_SELECTOR,
    "metrics.prometheusRule.labels": KPS_SELECTOR,
}
NAMESPACE = "covid-stats"


def _selected(rendered: Rendered, kind: str) -> list[dict[str, Any]]:
    """The operator's selection: objects of ``kind`` whose labels include the selector's."""
    return [
        doc
        for doc in rendered.of_kind(kind)
        if KPS_SELECTOR.items() <= doc["metadata"].get("labels", {}).items()
    ]


def _pod_port(rendered: Rendered, service: dict[str, Any], port_name: str) -> int:
    """The container port behind a Service port (its targetPort, by name or number), in the
    pod of the Deployment the Service selects."""
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == port_name]
    selector = service["spec"]["selector"]
    (workload,) = [
        d
        for d in rendered.of_kind("Deployment")
        if selector.items() <= rendered.pod_labels(d).items()
    ]
    for container in rendered.pod_spec(workload)["containers"]:
        names = {p.get("name") for p in container.get("ports", [])}
        numbers = {p["containerPort"] for p in container.get("ports", [])}
        if port["targetPort"] in names | numbers:
            return container_port(container, port["targetPort"])
    raise AssertionError(f"{service['metadata']['name']}: no container port {port}")


def operator_config(rendered: Rendered, folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The Prometheus configuration the operator would generate from the selected objects, and
    the jobs of its targets by component."""
    scrape_configs = []
    jobs: dict[str, str] = {}
    for monitor in _selected(rendered, "ServiceMonitor"):
        service = selected_service(rendered, monitor)
        component = service["metadata"]["labels"][COMPONENT_LABEL]
        for index, endpoint in enumerate(monitor["spec"]["endpoints"]):
            job = operator_job(rendered, monitor, endpoint)
            jobs[component] = job
            port = _pod_port(rendered, service, endpoint["port"])
            scrape_configs.append(
                {
                    "job_name": f"serviceMonitor/{NAMESPACE}/{monitor['metadata']['name']}/{index}",
                    "scrape_interval": endpoint["interval"],
                    "scrape_timeout": endpoint["scrapeTimeout"],
                    "metrics_path": endpoint["path"],
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{port}"],
                            "labels": {
                                "job": job,
                                "namespace": NAMESPACE,
                                "service": service["metadata"]["name"],
                                "endpoint": endpoint["port"],
                            },
                        }
                    ],
                }
            )
    rule_files = []
    for index, rule in enumerate(_selected(rendered, "PrometheusRule")):
        path = folder / f"rules-{index}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
        rule_files.append(str(path))
    config = {
        "global": {"evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": scrape_configs,
    }
    return config, jobs


def _promtool_checks(folder: Path, config: dict[str, Any]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run .ci/install-tools")
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run([promtool, "check", "config", path])


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Process] = []

    def start(config: dict[str, Any], name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        _promtool_checks(folder, config)
        process, url = start_prometheus(folder, config, name)
        started.append(process)
        return url

    yield start
    for process in started:
        process.stop()


def _api(url: str, path: str) -> Any:
    answer = httpx.get(f"{url}/api/v1/{path}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _up(url: str, job: str) -> bool:
    result = _api(url, f"query?query=up{{job=%22{job}%22}}")["result"]
    return [sample["value"][1] for sample in result] == ["1"]


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def _run_release(
    rendered: Rendered,
    local: dict[str, str],
    folder: Path,
    processes: list[Process],
) -> None:
    """The migration, the fetcher and the api of the render, run here until ready."""
    fetcher_name, api_name = f"{RELEASE}-stats-fetcher", f"{RELEASE}-api"
    _, argv, env = local_run(rendered, "Deployment", fetcher_name, "migrate", local, folder / "m")
    assert run([*argv], env=env, timeout=120).returncode == 0
    for name, container_name in ((fetcher_name, "stats-fetcher"), (api_name, "api")):
        container, argv, env = local_run(
            rendered, "Deployment", name, container_name, local, folder / container_name
        )
        process = spawn(f"discovery-{container_name}", argv, env, folder)
        processes.append(process)
        wait_200(process, probe_url(container, probes(container)["startup"]), timeout=60)


def test_kube_prometheus_stack_finds_the_targets_and_rules_with_the_documented_labels(
    redis_url: str,
    database_url: str,
    upstream: Upstream,
    tmp_path: Path,
    processes: list[Process],
    prometheus_factory: Any,
) -> None:
    ports = {
        "api.port": free_port(),
        "api.metrics.port": free_port(),
        "statsFetcher.port": free_port(),
    }
    rendered = render(values={**DOCUMENTED, **ports, "replayUpstream.enabled": True})
    config, jobs = operator_config(rendered, tmp_path)
    # Everything the chart offers is selected: both ServiceMonitors, the PrometheusRule.
    assert len(_selected(rendered, "ServiceMonitor")) == len(rendered.of_kind("ServiceMonitor"))
    assert set(jobs) == {"api", "stats-fetcher"}
    (rule,) = _selected(rendered, "PrometheusRule")
    local = {
        "redis": redis_url,
        "postgresql": database_url,
        "replay-upstream": upstream.url + "/",
    }
    _run_release(rendered, local, tmp_path, processes)
    url = prometheus_factory(config, "kps-documented")
    for job in jobs.values():
        wait_until(partial(_up, url, job), 60, what=f"target {job} up")
    targets = _api(url, "targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == set(jobs.values())
    assert all(t["health"] == "up" for t in targets), targets
    # The rules are loaded, every group and every rule of the PrometheusRule.
    loaded = _api(url, "rules")["groups"]
    wanted = rule["spec"]["groups"]
    assert {g["name"]: len(g["rules"]) for g in loaded} == {
        g["name"]: len(g["rules"]) for g in wanted
    }
    # ... and they evaluate against the scraped series (the fetcher's interval gauge is there).
    wait_until(
        lambda: bool(_api(url, "query?query=covid_stats_fetcher_fetch_interval_seconds")["result"]),
        30,
        what="the fetcher's series",
    )
    unhealthy = [
        r["name"] for g in _api(url, "rules")["groups"] for r in g["rules"] if r["health"] == "err"
    ]
    assert unhealthy == []


def test_kube_prometheus_stack_finds_nothing_with_the_defaults(
    tmp_path: Path, prometheus_factory: Any
) -> None:
    """ServiceMonitors and PrometheusRule on, without labels (the defaults): the operator's
    selection is empty, so its Prometheus has no target and no rule. This is the case the
    NOTES and the docs warn about."""
    rendered = render(values=MONITORING_ON)
    assert rendered.of_kind("ServiceMonitor")
    assert rendered.of_kind("PrometheusRule")
    config, jobs = operator_config(rendered, tmp_path)
    assert jobs == {}
    url = prometheus_factory(config, "kps-defaults")
    assert _api(url, "targets")["activeTargets"] == []
    assert _api(url, "rules")["groups"] == []
