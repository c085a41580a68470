"""The NetworkPolicies: the stores fenced, the api's port, egress exactly to what each pod is
configured to reach."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    RELEASE,
    Rendered,
    api_metrics_port,
    container_env,
    container_port,
    fake_secrets,
    nested_values,
    render,
    values_file,
)


def test_network_policies_fence_redis_and_postgresql(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    rendered, _ = renders["dev"]
    policies = {p["metadata"]["name"]: p["spec"] for p in rendered.of_kind("NetworkPolicy")}
    deny = policies[f"{RELEASE}-default-deny"]
    assert "ingress" not in deny
    assert deny["policyTypes"] == ["Ingress"]
    for doc in rendered.workloads():
        assert deny["podSelector"]["matchLabels"].items() <= rendered.pod_labels(doc).items()

    def clients(store: str) -> set[str]:
        (rule,) = policies[f"{RELEASE}-{store}"]["ingress"]
        (peer,) = rule["from"]
        (expression,) = peer["podSelector"]["matchExpressions"]
        assert expression["key"] == "app.kubernetes.io/component"
        return set(expression["values"])

    assert clients("redis") == {"api", "stats-fetcher"}
    assert clients("postgresql") == {"api", "stats-fetcher", "migrate"}
    components = {
        rendered.pod_labels(d)["app.kubernetes.io/component"] for d in rendered.workloads()
    }
    assert {"api", "stats-fetcher", "migrate"} <= components
    (rule,) = policies[f"{RELEASE}-replay-upstream"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "stats-fetcher"
    )


def _chart_values(value_set: str) -> dict[str, Any]:
    """The values a value set renders with: the chart's defaults, the set's file over them."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            merged[key] = merge(base[key], value) if both else value
        return merged

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load(values_file(value_set).read_text()) or {})


def _api_ingress_rule(rendered: Rendered) -> dict[str, Any]:
    """The api NetworkPolicy's rule of the api's traffic port (the container port `http`)."""
    policy = rendered.get("NetworkPolicy", f"{RELEASE}-api")
    api = rendered.get("Deployment", f"{RELEASE}-api")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= rendered.pod_labels(api).items()
    (rule,) = [
        r for r in policy["spec"]["ingress"] if {"port": "http", "protocol": "TCP"} in r["ports"]
    ]
    found: dict[str, Any] = rule
    return found


def test_the_api_port_is_open_by_default_and_fenced_by_networkpolicy_api_from(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """Empty `networkPolicy.api.from`: the api's port from anywhere. Set (the HA values: the
    ingress controller, Prometheus): from those peers and the release's helm test pod only;
    the fetcher's port stays open as before."""
    rendered, _ = renders["default"]
    assert "from" not in _api_ingress_rule(rendered)
    rendered, _ = renders["ha"]
    sources = _chart_values("ha")["networkPolicy"]["api"]["from"]
    assert sources
    peers = _api_ingress_rule(rendered)["from"]
    assert peers[: len(sources)] == sources
    (test_peer,) = peers[len(sources) :]
    assert set(test_peer) == {"podSelector"}  # the release's namespace
    (test_pod,) = [
        p for p in rendered.of_kind("Pod") if "helm.sh/hook" in p["metadata"]["annotations"]
    ]
    labels = rendered.pod_labels(test_pod)
    assert test_peer["podSelector"]["matchLabels"].items() <= labels.items()
    # ... and only it: no other pod of the release carries those labels.
    for doc in rendered.workloads():
        if doc is not test_pod:
            assert (
                not test_peer["podSelector"]["matchLabels"].items()
                <= rendered.pod_labels(doc).items()
            )
    # The metrics port has its own sources: Prometheus's, not the traffic port's.
    metrics = api_metrics_port(rendered)
    assert metrics is not None
    policy = rendered.get("NetworkPolicy", f"{RELEASE}-api")["spec"]
    (metrics_rule,) = [
        r for r in policy["ingress"] if any(p["port"] == metrics["name"] for p in r["ports"])
    ]
    assert metrics_rule["from"] == _chart_values("ha")["networkPolicy"]["api"]["metricsFrom"]
    default_policy = renders["default"][0].get("NetworkPolicy", f"{RELEASE}-api")["spec"]
    assert all("from" not in r for r in default_policy["ingress"])
    for value_set in ("default", "ha"):
        (rule,) = renders[value_set][0].get("NetworkPolicy", f"{RELEASE}-stats-fetcher")["spec"][
            "ingress"
        ]
        assert "from" not in rule, value_set


def _egress_rules(rendered: Rendered, labels: dict[str, str]) -> list[dict[str, Any]] | None:
    """The egress rules that apply to a pod of these labels; None: no egress policy selects
    it (its egress is open)."""
    policies = [
        p["spec"]
        for p in rendered.of_kind("NetworkPolicy")
        if "Egress" in p["spec"]["policyTypes"]
        and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    if not policies:
        return None
    for policy in policies:
        assert "matchExpressions" not in policy["podSelector"]
    return [rule for policy in policies for rule in policy.get("egress", [])]


def _egress_allows(
    rules: list[dict[str, Any]],
    port: int,
    *,
    protocol: str = "TCP",
    pod: dict[str, str] | None = None,
    peers: list[dict[str, Any]] | None = None,
) -> bool:
    """Whether the rules let a connection out to ``port``: to a pod of the release's namespace
    with labels ``pod``, or to a host outside it which the rules must name by exactly
    ``peers`` (None: allowed to any address)."""
    for rule in rules:
        if "ports" in rule and not any(
            p.get("port") == port and p.get("protocol", "TCP") == protocol for p in rule["ports"]
        ):
            continue
        to = rule.get("to")
        if pod is not None:
            if to is None or any(
                set(peer) == {"podSelector"}
                and "matchExpressions" not in peer["podSelector"]
                and peer["podSelector"]["matchLabels"].items() <= pod.items()
                for peer in to
            ):
                return True
        elif to == (peers or None):
            return True
    return False


# Where a container's configuration says it connects: env name -> the values that name the
# peers of that host when it is outside the release (networkPolicy.egress.<...>).
_CONNECTIONS = {
    "REDIS_URL": ("externalRedis",),
    "DATABASE_URL": ("externalDatabase",),
    "UPSTREAM_BASE_URL": ("upstream", "to"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("tracing", "to"),
}


def _destination(rendered: Rendered, url: str) -> tuple[dict[str, str] | None, int]:
    """Where a URL leads: (the labels of the release's pods behind it, their container port),
    or (None, the URL's port) for a host outside the release."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or {"https": 443, "http": 80}[parsed.scheme]
    service = rendered.maybe("Service", str(parsed.hostname))
    if service is None:
        return None, port
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    selector = service["spec"]["selector"]
    (target,) = [
        d
        for d in rendered.of_kind("Deployment", "StatefulSet")
        if selector.items() <= rendered.pod_labels(d).items()
    ]
    container = rendered.pod_spec(target)["containers"][0]
    return rendered.pod_labels(target), container_port(
        container, service_port.get("targetPort", port)
    )


def _egress_value_sets() -> list[tuple[str, dict[str, object]]]:
    return [
        ("ha", {}),
        ("external", {}),
        ("default", {"networkPolicy.egress.enabled": True, "replayUpstream.enabled": True}),
        (
            "default",
            {
                "networkPolicy.egress.enabled": True,
                "statsFetcher.upstream.baseUrl": "http://mirror.example.internal/ctp/",
                "networkPolicy.egress.upstream.to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
            },
        ),
    ]


def test_egress_is_open_unless_enabled(renders: dict[str, tuple[Rendered, Path]]) -> None:
    for value_set in ("default", "dev", "gitops"):
        rendered, _ = renders[value_set]
        for doc in rendered.workloads():
            assert _egress_rules(rendered, rendered.pod_labels(doc)) is None, value_set


@pytest.mark.parametrize(
    ("value_set", "values"), _egress_value_sets(), ids=["ha", "external", "replay", "mirror"]
)
def test_egress_lets_out_exactly_what_each_pod_is_configured_to_reach(
    value_set: str, values: dict[str, object]
) -> None:
    """With networkPolicy.egress.enabled, every pod of the release is fenced; each connection
    its rendered configuration names (REDIS_URL, DATABASE_URL, UPSTREAM_BASE_URL, the OTLP
    endpoint, the helm test pod's api URL) is allowed, to the release's pods behind the
    Service it names on their container port, or to a host outside on the URL's port and to
    exactly the peers the values give; DNS goes to the values' peers and ports; and nothing
    else: no pod reaches a connection of another's, and none reaches an address outside
    the release that it was not configured for."""
    rendered = render(values_file(value_set), values=values)
    chart_values = _chart_values(value_set)
    egress_values = chart_values["networkPolicy"]["egress"]
    for key, value in nested_values(values).get("networkPolicy", {}).get("egress", {}).items():
        egress_values[key] = {**egress_values[key], **value} if isinstance(value, dict) else value
    dns = egress_values["dns"]
    secrets = fake_secrets(rendered)
    reaches: dict[str, list[tuple[dict[str, str] | None, int, list[dict[str, Any]] | None]]] = {}
    for doc in rendered.workloads():
        labels = rendered.pod_labels(doc)
        rules = _egress_rules(rendered, labels)
        assert rules is not None, doc["metadata"]["name"]
        for port in dns["ports"]:
            assert _egress_allows(rules, port["port"], protocol=port["protocol"], peers=dns["to"])
        wanted = []
        spec = rendered.pod_spec(doc)
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = container_env(rendered, container, secrets)
            urls = {name: env[name] for name in _CONNECTIONS if env.get(name)}
            urls.update(
                {
                    f"arg{i}": a
                    for i, a in enumerate(container.get("args", []))
                    if a.startswith("http")
                }
            )
            for name, url in urls.items():
                pod, port = _destination(rendered, url)
                peers = None
                if pod is None:
                    node: Any = egress_values
                    for key in _CONNECTIONS[name]:
                        node = node[key]
                    peers = node
                wanted.append((pod, port, peers))
                assert _egress_allows(rules, port, pod=pod, peers=peers), (
                    doc["metadata"]["name"],
                    url,
                )
        reaches[doc["metadata"]["name"]] = wanted
    assert any(reaches.values())
    # Nothing more: what one pod reaches, a pod not configured for it does not.
    for doc in rendered.workloads():
        rules = _egress_rules(rendered, rendered.pod_labels(doc))
        assert rules is not None
        mine = reaches[doc["metadata"]["name"]]
        for other in reaches.values():
            for pod, port, _ in other:
                if any(p == pod and q == port for p, q, _ in mine):
                    continue
                if pod is None:
                    assert not _egress_allows(rules, port), (doc["metadata"]["name"], port)
                else:
                    assert not _egress_allows(rules, port, pod=pod), (doc["metadata"]["name"], port)
