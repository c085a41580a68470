"""The Prometheus alerts and the Grafana dashboard in deploy/helm/covid-stats/files/, as the
chart renders them (PrometheusRule, dashboard ConfigMap), job names included.

Runs the real promtool (`.ci/install-tools` installs it): `promtool check rules` on the rendered
rules, `promtool test rules` on their unit tests, and `promtool check rules` on every dashboard
query (wrapped as recording rules) so each one parses as PromQL. Every metric name the files use
must be one the api or the stats-fetcher exports, and every job they select must be one the
chart's ServiceMonitors give the targets (derived from the render, as prometheus-operator does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import Counter, Histogram

from covid_stats_api import metrics as api_metrics
from deploy_support import (
    RELEASE,
    Rendered,
    dashboard_panels,
    dashboard_queries,
    operator_jobs,
    render,
)
from stats_fetcher import metrics as fetcher_metrics
from support import REPO, metric_names

FILES = REPO / "deploy" / "helm" / "covid-stats" / "files"
ALERTS = FILES / "alerts.yaml"
ALERT_TESTS = FILES / "alerts.test.yaml"
DASHBOARD = FILES / "dashboard.json"
INSTALL_TOOLS = REPO / ".ci" / "install-tools"
# The job placeholders of the files, by the component whose job they stand for.
PLACEHOLDERS = {"@API_JOB@": "api", "@FETCHER_JOB@": "stats-fetcher"}
MONITORING = {
    "metrics.serviceMonitor.enabled": True,
    "metrics.prometheusRule.enabled": True,
    "metrics.grafanaDashboard.enabled": True,
}
# The chart's default job names, and names of a user's choosing.
JOB_VALUES = {
    "default": {},
    "renamed": {"metrics.jobs.api": "shop_api", "metrics.jobs.statsFetcher": "shop:fetcher-1"},
}

# What the services export: the series of every metric their metrics modules define (a
# counter's _total, a histogram's _bucket, _count and _sum, ...).
KNOWN_METRICS = metric_names(api_metrics, fetcher_metrics)
METRIC_NAME = re.compile(r"covid_stats_[a-z_]+")

DASHBOARD_PANELS = {
    "API request rate by route",
    "API 5xx ratio",
    "API latency p50 / p99",
    "Cache hit ratio by tier",
    "Connection pool usage",
    "Data age (api and fetcher)",
    "Snapshot id",
    "Fetch outcomes by resource",
    "Fetch errors by resource and reason",
    "Fetch duration by resource",
    "Fetcher leader",
}


PROMTOOL_MISSING = "promtool is not installed: run .ci/install-tools"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path. Without it the tests that run it skip on a developer's machine (`make
    test` needs only Python) and fail in CI (CI set), which installs it with .ci/install-tools."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(PROMTOOL_MISSING)
        pytest.skip(PROMTOOL_MISSING)
    return path


def run(*args: str, cwd: Path = FILES) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@dataclass
class Monitoring:
    """What the chart renders for Prometheus and Grafana under one set of values: the jobs its
    ServiceMonitors give the targets, the PrometheusRule's groups written as a rule file
    (alerts.yaml) beside the unit tests with their placeholders set to those jobs
    (alerts.test.yaml), and the dashboard."""

    jobs: dict[str, str]
    folder: Path
    groups: list[dict[str, Any]]
    dashboard: dict[str, Any]

    @property
    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.groups for rule in group["rules"] if "alert" in rule]

    @property
    def panels(self) -> list[dict[str, Any]]:
        return dashboard_panels(self.dashboard)


def monitoring_of(rendered: Rendered, folder: Path) -> Monitoring:
    jobs = operator_jobs(rendered)
    assert set(jobs) == set(PLACEHOLDERS.values()), jobs
    (rule,) = rendered.of_kind("PrometheusRule")
    groups = rule["spec"]["groups"]
    (folder / ALERTS.name).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tests = ALERT_TESTS.read_text()
    for placeholder, component in PLACEHOLDERS.items():
        tests = tests.replace(placeholder, jobs[component])
    (folder / ALERT_TESTS.name).write_text(tests)
    config = rendered.get("ConfigMap", f"{RELEASE}-dashboard")
    return Monitoring(jobs, folder, groups, json.loads(config["data"]["covid-stats.json"]))


@pytest.fixture(scope="module", params=list(JOB_VALUES))
def monitoring(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    rendered = render(values={**MONITORING, **JOB_VALUES[request.param]})
    return monitoring_of(rendered, tmp_path_factory.mktemp(request.param))


def unknown_metric_names(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text)) - KNOWN_METRICS


# --- the tool ---------------------------------------------------------------------------------


def test_install_tools_is_an_executable_idempotent_script(promtool: str) -> None:
    assert INSTALL_TOOLS.stat().st_mode & 0o111, ".ci/install-tools must be executable"
    assert run("bash", "-n", str(INSTALL_TOOLS)).returncode == 0
    # With promtool present it only says so (no apt-get).
    result = run(str(INSTALL_TOOLS), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "promtool present" in result.stdout


# --- alerts.yaml ------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str, monitoring: Monitoring) -> None:
    result = run(promtool, "check", "rules", ALERTS.name, cwd=monitoring.folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules(promtool: str, monitoring: Monitoring) -> None:
    result = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=monitoring.folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_asked_for_are_there(monitoring: Monitoring) -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in monitoring.rules}
    wanted = {
        "CovidStatsDataStale": "covid_stats_fetcher_data_age_seconds",
        "CovidStatsApiDataStale": "covid_stats_api_data_age_seconds",
        "CovidStatsFetcherNoLeader": "covid_stats_fetcher_leader",
        "CovidStatsFetchFailing": "covid_stats_fetcher_fetches_total",
        "CovidStatsApiHighErrorRatio": "covid_stats_api_requests_total",
        "CovidStatsApiHighLatencyP99": "covid_stats_api_request_duration_seconds_bucket",
        "CovidStatsTargetDown": "up{",
    }
    for alert, metric in wanted.items():
        assert metric in exprs.get(alert, ""), alert
    # Staleness: 3 of the fetchers' own intervals, whatever they are configured to (no constant).
    for alert in ("CovidStatsDataStale", "CovidStatsDataNeverConfirmed", "CovidStatsApiDataStale"):
        assert "3 * max by (namespace)" in exprs[alert], alert
        assert "covid_stats_fetcher_fetch_interval_seconds" in exprs[alert], alert
        assert not re.search(r"\b3 \* \d", exprs[alert]), alert
    assert 'status=~"5.."' in exprs["CovidStatsApiHighErrorRatio"]
    assert "histogram_quantile(0.99" in exprs["CovidStatsApiHighLatencyP99"]


def _selected_jobs(expr: str) -> set[str]:
    """The jobs a PromQL expression's `job=` and `job=~` matchers name."""
    jobs: set[str] = set()
    for value in re.findall(r'\bjob=~?"([^"]*)"', expr):
        jobs.update(value.split("|"))
    return jobs


def test_the_rules_and_the_dashboard_select_the_jobs_the_servicemonitors_give(
    monitoring: Monitoring,
) -> None:
    """Each target rule selects exactly the jobs prometheus-operator gives the chart's targets
    (the alert stays silent, or fires forever, the day they differ); no placeholder is left."""
    jobs = set(monitoring.jobs.values())
    for rule in monitoring.rules:
        assert "@" not in rule["expr"], rule["alert"]
        if "up{" in rule["expr"]:
            assert _selected_jobs(rule["expr"]) == jobs, rule["alert"]
    dashboard = json.dumps(monitoring.dashboard)
    assert "@" not in dashboard
    queries = [t["expr"] for p in monitoring.panels for t in p.get("targets", [])]
    queries += [v["query"] for v in monitoring.dashboard["templating"]["list"] if v.get("query")]
    up_queries = [q if isinstance(q, str) else q["query"] for q in queries]
    up_queries = [q for q in up_queries if "up{" in q]
    assert up_queries
    for query in up_queries:
        assert _selected_jobs(query) == jobs, query


def test_every_alert_has_for_severity_summary_description_and_runbook(
    monitoring: Monitoring,
) -> None:
    rules = monitoring.rules
    assert rules
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no for: duration"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: no {key} annotation"


def test_every_alert_is_tested_firing_and_not_firing(monitoring: Monitoring) -> None:
    suite = load_yaml(monitoring.folder / ALERT_TESTS.name)
    assert suite["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in monitoring.rules}
    assert alerts - firing == set(), "alerts without a case where they fire"
    assert alerts - silent == set(), "alerts without a case where they do not fire"
    assert (firing | silent) - alerts == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("path", [ALERTS, ALERT_TESTS], ids=lambda p: p.name)
def test_the_rules_and_their_tests_use_only_exported_metric_names(path: Path) -> None:
    text = path.read_text()
    assert METRIC_NAME.search(text)
    assert unknown_metric_names(text) == set()


# A rule's increase() of a fetcher counter, and the matchers in its selector.
INCREASE = re.compile(r"increase\((covid_stats_fetcher_[a-z_]+)\{([^}]*)\}\[")
MATCHER = re.compile(r'(\w+)(=~?)"([^"]*)"')


def test_every_fetcher_series_a_rule_counts_is_exported_before_its_first_increment(
    monitoring: Monitoring,
) -> None:
    """increase() cannot count a series' first sample: a labelled counter born at its first
    failure would keep that failure from every alert. Each series a rule's increase() selects
    (every label value its matchers name, `=~"a|b"` as a and b) is exported by the fetcher's
    metrics module from the start, before anything has counted."""
    exported = [
        (sample.name, sample.labels)
        for counter in vars(fetcher_metrics).values()
        if isinstance(counter, Counter)
        for family in counter.collect()
        for sample in family.samples
    ]
    checked = 0
    for rule in monitoring.rules:
        for name, matchers in INCREASE.findall(rule["expr"]):
            wanted: list[dict[str, str]] = [{}]
            for label, op, value in MATCHER.findall(matchers):
                if label != "job":  # Prometheus's, not the process's
                    values = value.split("|") if op == "=~" else [value]
                    wanted = [{**w, label: v} for w in wanted for v in values]
            for labels in wanted:
                assert any(n == name and labels.items() <= got.items() for n, got in exported), (
                    f"{rule['alert']}: no {name}{labels} before its first increment"
                )
                checked += 1
    assert checked >= 4


# --- dashboard.json ---------------------------------------------------------------------------


def test_dashboard_loads_with_a_datasource_variable_and_the_panels(
    monitoring: Monitoring,
) -> None:
    dashboard = monitoring.dashboard
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = monitoring.panels
    titles = {panel["title"] for panel in panels}
    assert DASHBOARD_PANELS - titles == set(), "panels missing from the dashboard"
    assert any(panel["type"] == "row" for panel in panels)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_panels_do_not_overlap(monitoring: Monitoring) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in monitoring.panels:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_uses_only_exported_metric_names(monitoring: Monitoring) -> None:
    exprs = [t["expr"] for p in monitoring.panels for t in p.get("targets", [])]
    for expr in exprs:
        assert METRIC_NAME.search(expr) or "up{" in expr, expr
        assert unknown_metric_names(expr) == set(), expr
    assert unknown_metric_names(DASHBOARD.read_text()) == set()


def test_dashboard_queries_are_valid_promql(
    promtool: str, monitoring: Monitoring, tmp_path: Path
) -> None:
    rules = [
        {"record": f"dashboard_panel_{key}", "expr": expr}
        for key, expr in dashboard_queries(monitoring.panels).items()
    ]
    (tmp_path / "dashboard-queries.yaml").write_text(
        json.dumps({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = run(promtool, "check", "rules", "dashboard-queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_known_metrics_follow_the_metrics_modules() -> None:
    """A metric added to a metrics module is known with nothing else to change, by its series'
    names only (a counter's bare family name selects nothing in Prometheus)."""
    module = ModuleType("grown_metrics")
    module.NEW = Counter("covid_stats_api_new_things", "new", ["kind"], registry=None)  # type: ignore[attr-defined]
    module.WAIT = Histogram("covid_stats_api_wait_seconds", "wait", registry=None)  # type: ignore[attr-defined]
    assert metric_names(module) == {
        "covid_stats_api_new_things_total",
        "covid_stats_api_new_things_created",
        "covid_stats_api_wait_seconds_bucket",
        "covid_stats_api_wait_seconds_count",
        "covid_stats_api_wait_seconds_sum",
        "covid_stats_api_wait_seconds_created",
    }
    assert metric_names(api_metrics, fetcher_metrics, module) - KNOWN_METRICS == metric_names(
        module
    )
    expr = "rate(covid_stats_api_requests[5m]) + covid_stats_api_requests_total"
    assert unknown_metric_names(expr) == {"covid_stats_api_requests"}
