"""The questions' Deployment (questions.enabled, ci/questions-values.yaml): api pods of their
own for the requests that carry a query string, which the edge cache's VCL sends them, so that
computing questions never takes CPU from the pods answering the hot documents
(docs/performance.md, "Hostile queries"). Every expected name, port and label is read from the
render. The rendered VCL runs in a real varnishd in front of two local servers standing for the
two Services; helm lint --strict, kubernetes-validate --strict and checkov pass on the render.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    KUBERNETES_VERSIONS,
    MAIN_CONTAINERS,
    Rendered,
    checkov_kubernetes,
    operator_jobs,
    render,
    run,
    tool,
    values_file,
)
from devstack.procs import free_port
from devstack.varnish import Varnish, varnishd_binary
from support import scratch_dir

QUESTIONS_VALUES = values_file("questions")
API_DEPLOYMENT, API_CONTAINER = MAIN_CONTAINERS["api"]
COMPONENT = "app.kubernetes.io/component"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render(QUESTIONS_VALUES)


def _component(rendered: Rendered, kind: str, component: str) -> list[dict[str, Any]]:
    return [d for d in rendered.of_kind(kind) if d["metadata"]["labels"][COMPONENT] == component]


def _deployment(rendered: Rendered, component: str) -> dict[str, Any]:
    (deployment,) = [
        d
        for d in rendered.of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"][COMPONENT] == component
    ]
    return deployment


def _vcl(rendered: Rendered) -> str:
    (config,) = _component(rendered, "ConfigMap", "edge-cache")
    vcl: str = config["data"]["default.vcl"]
    return vcl


def _backends(vcl: str) -> dict[str, tuple[str, str]]:
    """The VCL's backends: {name: (host, port)}."""
    blocks = re.findall(r"(?s)\nbackend (\w+) \{(.*?)\n\}", vcl)
    return {
        name: (
            re.search(r'\.host\s*=\s*"([^"]*)"', body)[1],  # type: ignore[index]
            re.search(r'\.port\s*=\s*"([^"]*)"', body)[1],  # type: ignore[index]
        )
        for name, body in blocks
    }


def test_off_by_default_nothing_of_the_questions_renders() -> None:
    rendered = render(values={"edgeCache.enabled": True})
    assert not [d for d in rendered.docs if "questions" in d["metadata"]["name"]]
    assert "questions" not in _vcl(rendered)


def test_the_questions_pods_are_the_api_pods_with_their_own_labels(rendered: Rendered) -> None:
    """The same container (image, command, settings, probes, mounts) and pod options as the
    api's; its own selector, replicas (its autoscaler) and name."""
    api = _deployment(rendered, "api")
    questions = _deployment(rendered, "questions")
    assert questions["metadata"]["name"] != api["metadata"]["name"]
    selector = questions["spec"]["selector"]["matchLabels"]
    assert selector[COMPONENT] == "questions"
    assert selector.items() <= questions["spec"]["template"]["metadata"]["labels"].items()

    def pod(deployment: dict[str, Any]) -> dict[str, Any]:
        spec = dict(deployment["spec"]["template"]["spec"])
        spec.pop("topologySpreadConstraints", None)  # spread among their own pods
        return spec

    assert pod(questions) == pod(api)
    spreads = questions["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["labelSelector"]["matchLabels"][COMPONENT] for s in spreads} == {"questions"}
    annotations = questions["spec"]["template"]["metadata"]["annotations"]
    assert annotations == api["spec"]["template"]["metadata"]["annotations"]


def test_services_pdb_and_hpa_target_the_questions_pods(rendered: Rendered) -> None:
    questions = _deployment(rendered, "questions")
    labels = questions["spec"]["template"]["metadata"]["labels"]
    services = _component(rendered, "Service", "questions")
    assert len(services) == 2  # traffic and metrics, as the api's
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
    (api_traffic,) = [
        s for s in _component(rendered, "Service", "api") if s["spec"]["ports"][0]["name"] == "http"
    ]
    (traffic,) = [s for s in services if s["spec"]["ports"][0]["name"] == "http"]
    assert traffic["spec"]["ports"] == api_traffic["spec"]["ports"]
    (pdb,) = _component(rendered, "PodDisruptionBudget", "questions")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = _component(rendered, "HorizontalPodAutoscaler", "questions")
    assert hpa["spec"]["scaleTargetRef"]["name"] == questions["metadata"]["name"]
    assert "replicas" not in questions["spec"]  # the autoscaler's


def test_the_questions_pods_are_scraped_under_the_apis_job(rendered: Rendered) -> None:
    """The alert rules and the dashboard select the api's job: the questions' pods are in it."""
    jobs = operator_jobs(rendered)
    monitors = _component(rendered, "ServiceMonitor", "questions")
    assert len(monitors) == 1
    relabel = monitors[0]["spec"]["endpoints"][0]["relabelings"][0]
    assert relabel["replacement"] == jobs["api"]


def test_network_policies_treat_the_questions_pods_as_api_pods(rendered: Rendered) -> None:
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    by_selected = {
        p["spec"]["podSelector"].get("matchLabels", {}).get(COMPONENT): p
        for p in policies.values()
        if "Ingress" in p["spec"]["policyTypes"]
    }
    api, questions = by_selected["api"], by_selected["questions"]
    assert questions["spec"]["ingress"] == api["spec"]["ingress"]
    for store in ("redis", "postgresql"):
        (rule,) = by_selected[store]["spec"]["ingress"]
        (expression,) = rule["from"][0]["podSelector"]["matchExpressions"]
        assert {"api", "questions"} <= set(expression["values"])
    egress = {
        p["spec"]["podSelector"]["matchLabels"][COMPONENT]: p
        for p in policies.values()
        if p["spec"]["policyTypes"] == ["Egress"]
        and "matchLabels" in p["spec"]["podSelector"]
        and COMPONENT in p["spec"]["podSelector"]["matchLabels"]
    }
    assert egress["questions"]["spec"]["egress"] == egress["api"]["spec"]["egress"]
    reached = {
        peer["podSelector"]["matchLabels"][COMPONENT]
        for rule in egress["edge-cache"]["spec"]["egress"]
        for peer in rule.get("to", [])
        if "podSelector" in peer
    }
    assert {"api", "questions"} <= reached


def test_the_vcl_has_a_backend_for_each_service(rendered: Rendered) -> None:
    backends = _backends(_vcl(rendered))
    for name, component in (("api", "api"), ("questions", "questions")):
        (service,) = [
            s
            for s in _component(rendered, "Service", component)
            if s["spec"]["ports"][0]["name"] == "http"
        ]
        assert backends[name] == (
            service["metadata"]["name"],
            str(service["spec"]["ports"][0]["port"]),
        )


class _Named(BaseHTTPRequestHandler):
    """Answers every GET with its server's name, cacheable for a minute."""

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def named_servers() -> Iterator[dict[str, int]]:
    servers = {}
    for name in ("api", "questions"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield {name: server.server_address[1] for name, server in servers.items()}
    for server in servers.values():
        server.shutdown()


def test_the_rendered_vcl_sends_questions_to_the_questions_pods(
    rendered: Rendered, named_servers: dict[str, int], tmp_path: Path
) -> None:
    """The VCL the edge pods load, in Debian's varnishd, each backend set to a local server
    that answers with its name: a request with a query string (however short) reaches the
    questions' one, every other the api's; each is cached as before."""
    if varnishd_binary() is None:
        pytest.skip("varnishd is not installed: run .ci/install-tools")
    vcl = re.sub(
        r"(?s)\nbackend (\w+) \{.*?\n\}",
        lambda block: re.sub(
            r'(\.port\s*=\s*)"[^"]*"',
            rf'\g<1>"{named_servers[block[1]]}"',
            re.sub(r'(\.host\s*=\s*)"[^"]*"', r'\g<1>"127.0.0.1"', block[0]),
        ),
        _vcl(rendered),
    )
    assert set(_backends(vcl).values()) == {("127.0.0.1", str(p)) for p in named_servers.values()}
    with scratch_dir("varnish") as workdir:  # varnishd's own user reads it
        varnish = Varnish(Path(workdir), free_port(), free_port(), backend_port=0, vcl=vcl)
        varnish.start()
        try:
            expected = {
                "/v1/us/current.json": "api",
                "/v1/states/current.json": "api",
                "/v1/states/daily.json?lastdays=3": "questions",
                "/v1/us/daily.json?sort=date": "questions",
                "/v1/us/current.json?": "questions",
            }
            for _ in range(2):  # fetched, then from the cache
                got = {path: httpx.get(f"{varnish.url}{path}").text for path in expected}
                assert got == expected
        finally:
            varnish.stop()


# --- lint, schemas, scanners ------------------------------------------------------------------


def test_helm_lint_strict() -> None:
    result = run(
        [
            tool("helm"),
            "lint",
            "--strict",
            QUESTIONS_VALUES.parents[1],
            "--values",
            QUESTIONS_VALUES,
        ]
    )
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("version", [KUBERNETES_VERSIONS[0], KUBERNETES_VERSIONS[-1]])
def test_the_render_validates_strictly(version: str, rendered: Rendered, tmp_path: Path) -> None:
    plain = tmp_path / f"plain-{version}.yaml"
    plain.write_text(
        yaml.safe_dump_all(
            [d for d in rendered.docs if d["kind"] not in {"ServiceMonitor", "PrometheusRule"}]
        )
    )
    result = run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, plain], check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_passes_on_the_questions(rendered: Rendered, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "questions.yaml").write_text(rendered.text)
    result = checkov_kubernetes(manifests)
    assert result.returncode == 0, result.stdout[-5000:]
