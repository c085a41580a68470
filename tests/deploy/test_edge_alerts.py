"""The edge cache's alerts (files/alerts-edge.yaml) as the chart's PrometheusRule carries them
with edgeCache enabled: `promtool check rules` and `promtool test rules` (alerts-edge.test.yaml,
`@EDGE_JOB@` set to the job the chart's ServiceMonitor gives the edge), and every metric name
the rules and their tests use is one the real prometheus-varnish-exporter serves for a real
varnishd running the chart's VCL (both installed by .ci/install-tools), never a hand-copied list.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import CHART, Rendered, operator_jobs, render, values_file
from devstack.procs import free_port, wait_until
from support import spawn

FILES = CHART / "files"
EDGE_ALERTS = FILES / "alerts-edge.yaml"
EDGE_TESTS = FILES / "alerts-edge.test.yaml"
BASE_ALERTS = FILES / "alerts.yaml"
PLACEHOLDER = "@EDGE_JOB@"
# Series Prometheus itself gives every target, not the exporter.
PROMETHEUS_SERIES = {"up"}
TOOLS = ("varnishd", "prometheus-varnish-exporter", "promtool")


def need(name: str) -> str:
    """A tool's path: skipped on a developer's machine without it, a failure in CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed: run .ci/install-tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class EdgeRules:
    rendered: Rendered
    job: str
    folder: Path
    groups: list[dict[str, Any]]

    @property
    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.groups for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def edge_rules(tmp_path_factory: pytest.TempPathFactory) -> EdgeRules:
    rendered = render(values_file("edge"), values={"metrics.jobs.edgeCache": "shop:edge-1"})
    job = operator_jobs(rendered)["edge-cache"]
    assert job == "shop:edge-1"
    (rule,) = rendered.of_kind("PrometheusRule")
    edge_names = {g["name"] for g in yaml.safe_load(EDGE_ALERTS.read_text())["groups"]}
    groups = [g for g in rule["spec"]["groups"] if g["name"] in edge_names]
    assert {g["name"] for g in groups} == edge_names
    folder = tmp_path_factory.mktemp("edge-rules")
    (folder / EDGE_ALERTS.name).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    (folder / EDGE_TESTS.name).write_text(EDGE_TESTS.read_text().replace(PLACEHOLDER, job))
    return EdgeRules(rendered, job, folder, groups)


@pytest.fixture(scope="module")
def exporter_names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The metric names prometheus-varnish-exporter serves for a varnishd running the chart's VCL
    (its backend a closed port on loopback: the backend series exist all the same)."""
    varnishd, exporter = need("varnishd"), need("prometheus-varnish-exporter")
    folder = tmp_path_factory.mktemp("varnish")
    vcl = (CHART / "files" / "varnish" / "default.vcl").read_text()
    vcl = re.sub(r'(\.host\s*=\s*)"[^"]*"', r'\g<1>"127.0.0.1"', vcl)
    vcl = re.sub(r'(\.port\s*=\s*)"[^"]*"', rf'\g<1>"{free_port()}"', vcl)
    (folder / "default.vcl").write_text(vcl)
    workdir = folder / "work"
    cache = spawn(
        "varnishd",
        [
            varnishd,
            "-F",
            "-j",
            "none",
            "-n",
            str(workdir),
            "-f",
            str(folder / "default.vcl"),
            "-a",
            f"127.0.0.1:{free_port()}",
            "-s",
            "malloc,16m",
        ],
        os.environ,
        folder,
    )
    port = free_port()
    metrics = spawn(
        "exporter",
        [exporter, "-n", str(workdir), "-web.listen-address", f"127.0.0.1:{port}"],
        os.environ,
        folder,
    )
    text = ""

    def scraped() -> bool:
        nonlocal text
        for process in (cache, metrics):
            if process.proc.poll() is not None:
                raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return False
        return "\nvarnish_up 1" in text and "varnish_main_cache_hit" in text

    try:
        wait_until(scraped, 60, interval=0.2, what="the exporter serving varnishd's counters")
        yield {
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
    finally:
        metrics.stop()
        cache.stop()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rendered_edge_rules(edge_rules: EdgeRules) -> None:
    result = run(need("promtool"), "check", "rules", EDGE_ALERTS.name, cwd=edge_rules.folder)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass_on_the_rendered_rules(edge_rules: EdgeRules) -> None:
    result = run(need("promtool"), "test", "rules", EDGE_TESTS.name, cwd=edge_rules.folder)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_edge_alert_is_tested_firing_and_not_firing(edge_rules: EdgeRules) -> None:
    suite = yaml.safe_load((edge_rules.folder / EDGE_TESTS.name).read_text())
    assert suite["rule_files"] == [EDGE_ALERTS.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in edge_rules.rules}
    assert alerts
    assert alerts == firing == silent


def test_every_selector_names_the_edge_job(edge_rules: EdgeRules) -> None:
    for rule in edge_rules.rules:
        selectors = re.findall(r"\{([^}]*)\}", rule["expr"])
        assert selectors, rule["alert"]
        for selector in selectors:
            assert f'job="{edge_rules.job}"' in selector, (rule["alert"], selector)
        assert rule["labels"]["component"] == "edge-cache"


def series_names(text: str) -> set[str]:
    """Metric names a PromQL expression or a test's series selects (names before `{`)."""
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", text))
    functions = {"rate", "sum", "by", "on", "max", "min", "and", "or"}
    return names - functions


def test_the_rules_and_their_tests_use_only_what_the_exporter_serves(
    edge_rules: EdgeRules, exporter_names: set[str]
) -> None:
    used = set()
    for rule in edge_rules.rules:
        used |= series_names(rule["expr"])
    suite = yaml.safe_load((edge_rules.folder / EDGE_TESTS.name).read_text())
    for case in suite["tests"]:
        for series in case["input_series"]:
            used |= series_names(series["series"])
    assert {n for n in used if n.startswith("varnish_")}, used
    assert used - exporter_names - PROMETHEUS_SERIES == set()


def test_edge_groups_only_with_the_edge_and_after_the_base_rules() -> None:
    monitoring = {"metrics.prometheusRule.enabled": True}
    base = {g["name"] for g in yaml.safe_load(BASE_ALERTS.read_text())["groups"]}
    edge = {g["name"] for g in yaml.safe_load(EDGE_ALERTS.read_text())["groups"]}
    (off,) = render(values=monitoring).of_kind("PrometheusRule")
    assert {g["name"] for g in off["spec"]["groups"]} == base
    (on,) = render(values={**monitoring, "edgeCache.enabled": True}).of_kind("PrometheusRule")
    assert [g["name"] for g in on["spec"]["groups"]][: len(base)] == [
        g["name"] for g in off["spec"]["groups"]
    ]
    assert {g["name"] for g in on["spec"]["groups"]} == base | edge
    (no_metrics,) = render(
        values={**monitoring, "edgeCache.enabled": True, "edgeCache.metrics.enabled": False}
    ).of_kind("PrometheusRule")
    assert {g["name"] for g in no_metrics["spec"]["groups"]} == base
