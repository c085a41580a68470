"""Exposure: the metrics port and Service, Ingress and Gateway API HTTPRoute (validated against
the Gateway API's schemas, deploy/tools/validate_httproute.mjs)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from covid_stats_api.serving.metrics_server import METRICS_PATH
from deploy_support import (
    CHART,
    COMPONENT_LABEL,
    RELEASE,
    Rendered,
    api_metrics_port,
    helm_template,
    pod_annotations,
    render,
    selected_service,
    validate_httproutes,
    values_file,
)

# -- exposure: Ingress and Gateway API HTTPRoute ----------------------------------------------


def _api_services(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        s
        for s in rendered.of_kind("Service")
        if s["spec"].get("selector", {}).get(COMPONENT_LABEL) == "api"
        and s["spec"].get("clusterIP") != "None"
    ]


def _api_service(rendered: Rendered) -> dict[str, Any]:
    """The api's Service for traffic (what an Ingress or HTTPRoute sends to): the one that
    does not target the metrics port."""
    metrics = api_metrics_port(rendered)
    (service,) = [
        s
        for s in _api_services(rendered)
        if metrics is None
        or all(
            p["targetPort"] not in (metrics["name"], metrics["containerPort"])
            for p in s["spec"]["ports"]
        )
    ]
    return service


def test_metrics_are_served_on_their_own_port_and_service_only(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """api.metrics.port reaches gunicorn (API_METRICS_PORT), the pod's named port, the scrape
    annotations, a ClusterIP Service of its own, the ServiceMonitor and the NetworkPolicy;
    never the api's traffic Service (a LoadBalancer or an Ingress would publish it)."""
    rendered, _ = renders["ha"]
    metrics = api_metrics_port(rendered)
    assert metrics is not None
    config = rendered.get("ConfigMap", f"{RELEASE}-api")["data"]
    assert metrics["containerPort"] != int(config["API_PORT"])
    annotations = pod_annotations(rendered, f"{RELEASE}-api")
    assert annotations["prometheus.io/port"] == str(metrics["containerPort"])
    assert annotations["prometheus.io/path"] == METRICS_PATH

    traffic = _api_service(rendered)
    (metrics_service,) = [s for s in _api_services(rendered) if s is not traffic]
    assert metrics_service["spec"]["type"] == "ClusterIP"
    (service_port,) = metrics_service["spec"]["ports"]
    assert service_port["targetPort"] == metrics["name"]

    monitor = rendered.get("ServiceMonitor", f"{RELEASE}-api")
    assert selected_service(rendered, monitor) is metrics_service
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (service_port["name"], METRICS_PATH)

    policy = rendered.get("NetworkPolicy", f"{RELEASE}-api")["spec"]
    allowed = {port["port"] for rule in policy["ingress"] for port in rule.get("ports", [])}
    assert metrics["name"] in allowed

    off = render(values={"api.metrics.enabled": False, "metrics.serviceMonitor.enabled": True})
    assert off.get("ConfigMap", f"{RELEASE}-api")["data"]["API_METRICS_PORT"] == "0"
    assert api_metrics_port(off) is None
    assert len(_api_services(off)) == 1
    assert "prometheus.io/scrape" not in pod_annotations(off, f"{RELEASE}-api")
    assert [m["metadata"]["name"] for m in off.of_kind("ServiceMonitor")] == [
        f"{RELEASE}-stats-fetcher"
    ]


def test_exposure_is_off_by_default() -> None:
    rendered = render()
    assert not rendered.of_kind("Ingress", "HTTPRoute")


def test_the_ingress_sends_every_host_and_path_to_the_api_only(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    rendered, _ = renders["ha"]
    values = yaml.safe_load(values_file("ha").read_text())["ingress"]
    (ingress,) = rendered.of_kind("Ingress")
    service = _api_service(rendered)
    port_names = {p["name"] for p in service["spec"]["ports"]}
    spec = ingress["spec"]
    assert spec["ingressClassName"] == values["className"]
    assert spec["tls"] == values["tls"]
    assert ingress["metadata"]["annotations"] == values["annotations"]
    wanted = [(h["host"], p["path"], p["pathType"]) for h in values["hosts"] for p in h["paths"]]
    found = []
    for rule in spec["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]  # the api, never the fetcher
            assert backend["port"]["name"] in port_names
            found.append((rule.get("host"), path["path"], path["pathType"]))
    assert found == wanted


def test_the_httproute_attaches_to_the_gateways_and_sends_to_the_api(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    rendered, _ = renders["external"]
    values = yaml.safe_load(values_file("external").read_text())["httpRoute"]
    (route,) = rendered.of_kind("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    service = _api_service(rendered)
    spec = route["spec"]
    assert spec["parentRefs"] == values["parentRefs"]
    assert spec["hostnames"] == values["hostnames"]
    (rule,) = spec["rules"]
    assert rule["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    chart_paths = yaml.safe_load((CHART / "values.yaml").read_text())["httpRoute"]["paths"]
    assert [m["path"] for m in rule["matches"]] == [
        {"type": p["type"], "value": p["path"]} for p in chart_paths
    ]


def test_httproutes_validate_against_the_gateway_api_schema(
    renders: dict[str, tuple[Rendered, Path]], tmp_path: Path
) -> None:
    """kubernetes-validate has no CRD schemas: every rendered HTTPRoute is checked against the
    Gateway API's own (enums, patterns, bounds, required fields of gateway.networking.k8s.io/v1)."""
    routes = {
        value_set: rendered.of_kind("HTTPRoute") for value_set, (rendered, _) in renders.items()
    }
    assert routes["external"], "a value set must enable the HTTPRoute"
    for value_set, found in routes.items():
        if found:
            result = validate_httproutes(found, tmp_path / value_set)
            assert result.returncode == 0, value_set + result.stdout + result.stderr


def _set_path_type(route: dict[str, Any]) -> None:
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"  # the Ingress's word


def _name_the_port(route: dict[str, Any]) -> None:
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = "http"  # a Service port by name


def _bad_hostname(route: dict[str, Any]) -> None:
    route["spec"]["hostnames"] = ["Covid_Stats.example.com"]


def _nameless_parent(route: dict[str, Any]) -> None:
    del route["spec"]["parentRefs"][0]["name"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set_path_type, "/spec/rules/0/matches/0/path/type must be equal to one of the allowed"),
        (_name_the_port, "/spec/rules/0/backendRefs/0/port must be integer"),
        (_bad_hostname, "/spec/hostnames/0 must match pattern"),
        (_nameless_parent, "/spec/parentRefs/0 must have required property"),
    ],
    ids=["ingress-path-type", "port-by-name", "hostname", "parent-without-name"],
)
def test_an_invalid_httproute_fails_the_gateway_api_schema(
    renders: dict[str, tuple[Rendered, Path]],
    tmp_path: Path,
    mutate: Any,
    message: str,
) -> None:
    """The check can fail: the rendered route with one mistake is refused, saying where."""
    (route,) = copy.deepcopy(renders["external"][0].of_kind("HTTPRoute"))
    mutate(route)
    result = validate_httproutes([route], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"httpRoute.enabled": True}, "httpRoute.parentRefs is required"),
        ({"ingress.enabled": True, "ingress.hosts": []}, "ingress.hosts is required"),
    ],
    ids=["route-without-gateway", "ingress-without-hosts"],
)
def test_exposure_misconfigurations_are_refused(values: dict[str, object], message: str) -> None:
    result = helm_template(values=values, check=False)
    assert result.returncode != 0
    assert message in result.stderr
