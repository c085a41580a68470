"""The Prometheus alerts and the Grafana dashboard in deploy/helm/covid-stats/files/.

Runs the real promtool (`.ci/install-tools` installs it): `promtool check rules` on the rules,
`promtool test rules` on their unit tests, and `promtool check rules` on every dashboard query
(wrapped as recording rules) so each one parses as PromQL. Every metric name the files use must
be one the api or the stats-fetcher exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
FILES = REPO / "deploy" / "helm" / "covid-stats" / "files"
ALERTS = FILES / "alerts.yaml"
ALERT_TESTS = FILES / "alerts.test.yaml"
DASHBOARD = FILES / "dashboard.json"
INSTALL_TOOLS = REPO / ".ci" / "install-tools"

# What the services export (stats_fetcher/metrics.py and the api's metrics).
FETCHER_METRICS = {
    "covid_stats_fetcher_fetches_total",
    "covid_stats_fetcher_fetch_errors_total",
    "covid_stats_fetcher_fetch_duration_seconds",
    "covid_stats_fetcher_records_written_total",
    "covid_stats_fetcher_last_success_timestamp_seconds",
    "covid_stats_fetcher_refresh_duration_seconds",
    "covid_stats_fetcher_snapshots_published_total",
    "covid_stats_fetcher_publish_errors_total",
    "covid_stats_fetcher_snapshot_id",
    "covid_stats_fetcher_leader",
    "covid_stats_fetcher_data_age_seconds",
    "covid_stats_fetcher_build_info",
}
API_METRICS = {
    "covid_stats_api_requests_total",
    "covid_stats_api_request_duration_seconds",
    "covid_stats_api_cache_lookups_total",
    "covid_stats_api_data_age_seconds",
    "covid_stats_api_snapshot_id",
    "covid_stats_api_redis_pool_connections",
    "covid_stats_api_db_pool_connections",
    "covid_stats_api_build_info",
}
KNOWN_METRICS = FETCHER_METRICS | API_METRICS
HISTOGRAMS = {
    "covid_stats_fetcher_fetch_duration_seconds",
    "covid_stats_fetcher_refresh_duration_seconds",
    "covid_stats_api_request_duration_seconds",
}
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


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def unknown_metric_names(text: str) -> set[str]:
    unknown = set()
    for name in METRIC_NAME.findall(text):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if name not in KNOWN_METRICS and not (base != name and base in HISTOGRAMS):
            unknown.add(name)
    return unknown


# --- the tool ---------------------------------------------------------------------------------


def test_install_tools_is_an_executable_idempotent_script(promtool: str) -> None:
    assert INSTALL_TOOLS.stat().st_mode & 0o111, ".ci/install-tools must be executable"
    assert run("bash", "-n", str(INSTALL_TOOLS)).returncode == 0
    # With promtool present it only says so (no apt-get).
    result = run(str(INSTALL_TOOLS), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "promtool present" in result.stdout


# --- alerts.yaml ------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run(promtool, "test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_asked_for_are_there() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
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
    assert "3 * 300" in exprs["CovidStatsDataStale"]  # 3 refresh intervals of 300 s
    assert 'status=~"5.."' in exprs["CovidStatsApiHighErrorRatio"]
    assert "histogram_quantile(0.99" in exprs["CovidStatsApiHighLatencyP99"]
    assert "covid-stats-api" in exprs["CovidStatsTargetDown"]
    assert "covid-stats-fetcher" in exprs["CovidStatsTargetDown"]


def test_every_alert_has_for_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    assert rules
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no for: duration"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: no {key} annotation"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    suite = load_yaml(ALERT_TESTS)
    assert suite["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "alerts without a case where they fire"
    assert alerts - silent == set(), "alerts without a case where they do not fire"
    assert (firing | silent) - alerts == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("path", [ALERTS, ALERT_TESTS], ids=lambda p: p.name)
def test_the_rules_and_their_tests_use_only_exported_metric_names(path: Path) -> None:
    text = path.read_text()
    assert METRIC_NAME.search(text)
    assert unknown_metric_names(text) == set()


# --- dashboard.json ---------------------------------------------------------------------------


def test_dashboard_loads_with_a_datasource_variable_and_the_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = dashboard_panels()
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


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels():
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_uses_only_exported_metric_names() -> None:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for expr in exprs:
        assert METRIC_NAME.search(expr) or "up{" in expr, expr
        assert unknown_metric_names(expr) == set(), expr
    assert unknown_metric_names(DASHBOARD.read_text()) == set()


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    grafana_variables = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}
    rules = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in grafana_variables.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown Grafana variable in {target['expr']}"
            rules.append(
                {"record": f"dashboard_panel_{panel['id']}_{target['refId']}", "expr": expr}
            )
    (tmp_path / "dashboard-queries.yaml").write_text(
        json.dumps({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = run(promtool, "check", "rules", "dashboard-queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
