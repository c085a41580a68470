"""The chart's edge cache (edgeCache, ci/edge-values.yaml): a Varnish Deployment with its VCL
(deploy/varnish/default.vcl, the api Service as its backend), a client Service, a headless
purge Service the fetcher's PURGE_URLS names, a metrics sidecar scraped as the chart scrapes
everything, PDB, HPA and NetworkPolicies. Every expected name, port and label is read from the
render; the VCL from its one source. helm lint --strict, kubernetes-validate --strict and
checkov pass on the render; the install-time checks refuse bad combinations.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    KUBERNETES_VERSIONS,
    MAIN_CONTAINERS,
    RELEASE,
    Rendered,
    checkov_kubernetes,
    container_env,
    helm_template,
    operator_jobs,
    pod_annotations,
    render,
    run,
    tool,
    validate_httproutes,
    values_file,
)
from support import REPO

EDGE_VALUES = values_file("edge")
VCL_SOURCE = REPO / "deploy" / "varnish" / "default.vcl"
VCL_COPY = CHART / "files" / "varnish" / "default.vcl"
EDGE = f"{RELEASE}-edge-cache"
FETCHER_DEPLOYMENT, FETCHER_CONTAINER = MAIN_CONTAINERS["stats-fetcher"]
API_DEPLOYMENT, _ = MAIN_CONTAINERS["api"]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Rendered, Path]:
    rendered = render(EDGE_VALUES)
    path = tmp_path_factory.mktemp("edge") / "edge.yaml"
    path.write_text(rendered.text)
    return rendered, path


def edge_deployment(rendered: Rendered) -> dict[str, Any]:
    (deployment,) = [
        d
        for d in rendered.of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == "edge-cache"
    ]
    return deployment


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return dict(found)


def port_of(item: dict[str, Any], name: str) -> int:
    (port,) = [p for p in item["ports"] if p["name"] == name]
    return int(port.get("containerPort", port.get("port")))


def listen_args(argv: list[str]) -> dict[str, int]:
    """varnishd's `-a name=:port,PROTO` listeners: {name: port}."""
    listeners = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-a":
            match = re.fullmatch(r"(\w+)=[^:]*:(\d+)(,\w+)?", value)
            assert match, value
            listeners[match.group(1)] = int(match.group(2))
    return listeners


def services_selecting(rendered: Rendered, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return [
        s
        for s in rendered.of_kind("Service")
        if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()
    ]


def vcl_parts(vcl: str) -> tuple[list[str], list[str], list[str]]:
    """The backend's .host and .port values and the ACL's entries of a VCL."""
    hosts = re.findall(r'\.host\s*=\s*"([^"]*)"', vcl)
    ports = re.findall(r'\.port\s*=\s*"([^"]*)"', vcl)
    (acl,) = re.findall(r"(?ms)^acl\s+\w+\s*\{(.*?)\}", vcl)
    entries = [
        line.strip()
        for line in acl.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    return hosts, ports, entries


def rendered_vcl(rendered: Rendered) -> str:
    deployment = edge_deployment(rendered)
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    data: dict[str, str] = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
    (text,) = data.values()
    return text


# --- the VCL: one source, templated in three places -----------------------------------------


def test_the_charts_vcl_is_the_source() -> None:
    """files/varnish/default.vcl is deploy/varnish/default.vcl (`make chart-vcl`): drift."""
    assert VCL_COPY.read_bytes() == VCL_SOURCE.read_bytes(), "run make chart-vcl"


def test_the_rendered_vcl_is_the_source_with_the_api_service_and_the_acl(
    edge: tuple[Rendered, Path],
) -> None:
    rendered, _ = edge
    vcl = rendered_vcl(rendered)
    api_service = rendered.get("Service", f"{RELEASE}-api")
    hosts, ports, entries = vcl_parts(vcl)
    assert hosts == [api_service["metadata"]["name"]]
    assert ports == [str(port_of(api_service["spec"], "http"))]
    acl = yaml.safe_load(CHART.joinpath("values.yaml").read_text())["edgeCache"]["purge"]["acl"]
    expected = [
        f'"{cidr.split("/")[0]}"/{cidr.split("/")[1]};' if "/" in cidr else f'"{cidr}";'
        for cidr in acl
    ]
    assert entries == expected
    # Nothing else changed: the source with those three parts set back is the render.
    src_hosts, src_ports, src_entries = vcl_parts(VCL_SOURCE.read_text())
    back = vcl.replace(f'"{hosts[0]}"', f'"{src_hosts[0]}"', 1)
    back = re.sub(r'(\.port\s*=\s*)"[^"]*"', rf'\g<1>"{src_ports[0]}"', back, count=1)
    back = back.replace("\n    ".join(entries), "\n    ".join(src_entries), 1)
    assert back.strip() == VCL_SOURCE.read_text().strip()


def test_the_rendered_vcl_compiles_with_the_xkey_vmod(
    edge: tuple[Rendered, Path], tmp_path: Path
) -> None:
    """varnishd -C (Debian's Varnish 7.1 and varnish-modules: .ci/install-tools) compiles the
    VCL the pods load; the backend's host set to one this machine resolves."""
    varnishd = shutil.which("varnishd") or "/usr/sbin/varnishd"
    if not Path(varnishd).exists():
        pytest.skip("varnishd is not installed: run .ci/install-tools")
    rendered, _ = edge
    vcl = re.sub(r'(\.host\s*=\s*)"[^"]*"', r'\g<1>"127.0.0.1"', rendered_vcl(rendered))
    assert "import xkey;" in vcl
    (tmp_path / "default.vcl").write_text(vcl)
    result = subprocess.run(
        [varnishd, "-C", "-j", "none", "-n", tmp_path / "work", "-f", tmp_path / "default.vcl"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_vcl_the_chart_cannot_template_fails_the_render(tmp_path: Path) -> None:
    """A VCL with two backends (two .host lines) is refused, never shipped half-templated."""
    chart = tmp_path / "covid-stats"
    shutil.copytree(CHART, chart)
    copy = chart / "files" / "varnish" / "default.vcl"
    copy.write_text(copy.read_text() + '\nbackend other {\n    .host = "x";\n}\n')
    result = run(
        [tool("helm"), "template", RELEASE, chart, "--set", "edgeCache.enabled=true"],
        check=False,
    )
    assert result.returncode != 0
    assert "exactly one a backend .host" in result.stderr


# --- what renders ---------------------------------------------------------------------------


def test_off_by_default_nothing_of_the_edge_renders() -> None:
    rendered = render(values={"ingress.enabled": True})
    assert not [d for d in rendered.docs if "edge" in d["metadata"]["name"]]
    fetcher = rendered.container("Deployment", FETCHER_DEPLOYMENT, FETCHER_CONTAINER)
    assert container_env(rendered, fetcher)["PURGE_URLS"] == ""
    (ingress,) = rendered.of_kind("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == rendered.get("Service", f"{RELEASE}-api")["metadata"]["name"]


def test_the_edge_runs_the_official_varnish_with_its_listeners_on_its_ports(
    edge: tuple[Rendered, Path],
) -> None:
    rendered, _ = edge
    deployment = edge_deployment(rendered)
    varnish = container(deployment, "varnish")
    values = yaml.safe_load(CHART.joinpath("values.yaml").read_text())["edgeCache"]
    assert varnish["image"] == f"{values['image']['repository']}:{values['image']['tag']}"
    argv = varnish["command"] + varnish["args"]
    assert argv[0] == "varnishd"
    assert listen_args(argv) == {
        "http": port_of(varnish, "http"),
        "purge": port_of(varnish, "purge"),
    }
    # The VCL the ConfigMap holds is the file varnishd loads.
    vcl_path = Path(argv[argv.index("-f") + 1])
    (mount,) = [m for m in varnish["volumeMounts"] if m["name"] == "vcl"]
    assert vcl_path.parent == Path(mount["mountPath"])
    assert vcl_path.name in rendered.get("ConfigMap", EDGE)["data"]
    # The exporter reads the work directory varnishd writes, in a shared process namespace.
    exporter = container(deployment, "exporter")
    workdir = argv[argv.index("-n") + 1]
    exporter_argv = exporter["command"] + exporter["args"]
    assert exporter_argv[exporter_argv.index("-n") + 1] == workdir
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for c in (varnish, exporter)
    }
    assert mounts["varnish"][workdir] == mounts["exporter"][workdir]
    assert deployment["spec"]["template"]["spec"]["shareProcessNamespace"] is True
    listen = exporter_argv[exporter_argv.index("-web.listen-address") + 1]
    assert int(listen.rpartition(":")[2]) == port_of(exporter, "metrics")
    # A non-root pod on a read-only root, like every other of the chart's.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in (varnish, exporter):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_global_image_registry_retargets_both_edge_images() -> None:
    rendered = render(EDGE_VALUES, values={"global.imageRegistry": "registry.example/team"})
    deployment = edge_deployment(rendered)
    for name in ("varnish", "exporter"):
        assert container(deployment, name)["image"].startswith("registry.example/team/"), name
    default = edge_deployment(render(EDGE_VALUES))
    assert (
        container(deployment, "exporter")["image"]
        == "registry.example/team/" + container(default, "exporter")["image"]
    )


def test_services_clients_purges_and_metrics(edge: tuple[Rendered, Path]) -> None:
    rendered, _ = edge
    deployment = edge_deployment(rendered)
    varnish = container(deployment, "varnish")
    by_port = {
        s["spec"]["ports"][0]["targetPort"]: s for s in services_selecting(rendered, deployment)
    }
    assert set(by_port) == {"http", "purge", "metrics"}
    assert by_port["purge"]["spec"]["clusterIP"] == "None"  # every pod's address
    assert by_port["http"]["spec"].get("clusterIP") != "None"
    # The fetcher purges through the headless Service, on its port.
    fetcher = rendered.container("Deployment", FETCHER_DEPLOYMENT, FETCHER_CONTAINER)
    purge = by_port["purge"]
    assert container_env(rendered, fetcher)["PURGE_URLS"] == (
        f"http://{purge['metadata']['name']}:{purge['spec']['ports'][0]['port']}/"
    )
    assert port_of(varnish, "purge") == int(
        next(p for p in varnish["ports"] if p["name"] == purge["spec"]["ports"][0]["targetPort"])[
            "containerPort"
        ]
    )
    # The Ingress and the HTTPRoute route through the edge's client Service.
    client = by_port["http"]
    (ingress,) = rendered.of_kind("Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            service = path["backend"]["service"]
            assert service["name"] == client["metadata"]["name"]
            assert service["port"]["name"] == client["spec"]["ports"][0]["name"]
    (route,) = rendered.of_kind("HTTPRoute")
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            assert (ref["name"], ref["port"]) == (
                client["metadata"]["name"],
                client["spec"]["ports"][0]["port"],
            )


def test_purge_urls_of_yours_come_first_then_the_edges() -> None:
    """statsFetcher.purge.urls (an edge of the user's) and the chart's edge: both purged."""
    theirs = ["http://cdn-purger.example:8080/"]
    rendered = render(EDGE_VALUES, values={"statsFetcher.purge.urls": theirs})
    fetcher = rendered.container("Deployment", FETCHER_DEPLOYMENT, FETCHER_CONTAINER)
    deployment = edge_deployment(rendered)
    (purge,) = [
        s
        for s in services_selecting(rendered, deployment)
        if s["spec"]["ports"][0]["targetPort"] == "purge"
    ]
    ours = f"http://{purge['metadata']['name']}:{purge['spec']['ports'][0]['port']}/"
    assert container_env(rendered, fetcher)["PURGE_URLS"].split(",") == [*theirs, ours]


def test_pdb_and_hpa_target_the_edge(edge: tuple[Rendered, Path]) -> None:
    rendered, _ = edge
    deployment = edge_deployment(rendered)
    name = deployment["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = rendered.get("PodDisruptionBudget", name)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] >= 1
    hpa = rendered.get("HorizontalPodAutoscaler", name)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    fixed = edge_deployment(render(EDGE_VALUES, values={"edgeCache.autoscaling.enabled": False}))
    assert fixed["spec"]["replicas"] >= 2


def test_the_edge_is_scraped_under_one_job_both_ways(edge: tuple[Rendered, Path]) -> None:
    """The ServiceMonitor's job (as prometheus-operator derives it) is the pods' prometheus.io/job,
    on the port the annotations name: the exporter's."""
    rendered, _ = edge
    jobs = operator_jobs(rendered)
    deployment = edge_deployment(rendered)
    annotations = pod_annotations(rendered, deployment["metadata"]["name"])
    assert jobs["edge-cache"] == annotations["prometheus.io/job"]
    assert int(annotations["prometheus.io/port"]) == port_of(
        container(deployment, "exporter"), "metrics"
    )
    renamed = render(EDGE_VALUES, values={"metrics.jobs.edgeCache": "shop:edge"})
    assert operator_jobs(renamed)["edge-cache"] == "shop:edge"


def test_install_notes_name_the_edge_service(edge: tuple[Rendered, Path]) -> None:
    rendered, _ = edge
    client = next(
        s
        for s in services_selecting(rendered, edge_deployment(rendered))
        if s["spec"]["ports"][0]["targetPort"] == "http"
    )
    argv: list[str | Path] = [tool("helm"), "install", RELEASE, CHART, "--values", EDGE_VALUES]
    result = run([*argv, "--dry-run=client", "--namespace", "demo"])
    notes = result.stdout.partition("\nNOTES:\n")[2]
    name, port = client["metadata"]["name"], client["spec"]["ports"][0]["port"]
    assert f"http://{name}.demo.svc:{port}" in notes, notes


# --- NetworkPolicies ------------------------------------------------------------------------


def policies_of(rendered: Rendered, labels: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if kind in p["spec"]["policyTypes"]
        and p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
    ]


def selects(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    return (
        set(peer) == {"podSelector"}
        and peer["podSelector"]["matchLabels"].items() <= labels.items()
    )


def test_purge_port_only_from_the_fetcher_client_port_from_its_peers(
    edge: tuple[Rendered, Path],
) -> None:
    rendered, _ = edge
    deployment = edge_deployment(rendered)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    fetcher_labels = rendered.pod_labels(rendered.get("Deployment", FETCHER_DEPLOYMENT))
    rules = [
        r for p in policies_of(rendered, labels, "Ingress") for r in p["spec"].get("ingress", [])
    ]
    by_port = {r["ports"][0]["port"]: r for r in rules}
    assert set(by_port) == {"http", "purge", "metrics"}
    (peer,) = by_port["purge"]["from"]
    assert selects(peer, fetcher_labels)
    values = yaml.safe_load(EDGE_VALUES.read_text())["networkPolicy"]
    assert by_port["http"]["from"] == values["edgeCache"]["from"]
    # The api's fenced port admits the edge's pods.
    api_labels = rendered.pod_labels(rendered.get("Deployment", API_DEPLOYMENT))
    api_rules = [
        r
        for p in policies_of(rendered, api_labels, "Ingress")
        for r in p["spec"].get("ingress", [])
    ]
    (http,) = [r for r in api_rules if r["ports"][0]["port"] == "http"]
    assert any(selects(peer, labels) for peer in http["from"])


def test_egress_fetcher_to_the_purge_port_edge_to_the_api(edge: tuple[Rendered, Path]) -> None:
    rendered, _ = edge
    deployment = edge_deployment(rendered)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    purge_port = port_of(container(deployment, "varnish"), "purge")
    fetcher_labels = rendered.pod_labels(rendered.get("Deployment", FETCHER_DEPLOYMENT))
    fetcher_rules = [
        r for p in policies_of(rendered, fetcher_labels, "Egress") for r in p["spec"]["egress"]
    ]
    assert any(
        any(selects(peer, labels) for peer in r.get("to", []))
        and [p["port"] for p in r["ports"]] == [purge_port]
        for r in fetcher_rules
    )
    api = rendered.get("Deployment", API_DEPLOYMENT)
    api_port = port_of(rendered.pod_spec(api)["containers"][0], "http")
    edge_rules = [r for p in policies_of(rendered, labels, "Egress") for r in p["spec"]["egress"]]
    assert any(
        any(selects(peer, rendered.pod_labels(api)) for peer in r.get("to", []))
        and [p["port"] for p in r["ports"]] == [api_port]
        for r in edge_rules
    )


# --- lint, schemas, scanners ------------------------------------------------------------------


def test_helm_lint_strict() -> None:
    result = run([tool("helm"), "lint", "--strict", CHART, "--values", EDGE_VALUES])
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("version", [KUBERNETES_VERSIONS[0], KUBERNETES_VERSIONS[-1]])
def test_the_render_validates_strictly(version: str, edge: tuple[Rendered, Path]) -> None:
    rendered, path = edge
    plain = path.with_name(f"plain-{version}.yaml")
    plain.write_text(
        yaml.safe_dump_all(
            [
                d
                for d in rendered.docs
                if d["kind"] not in {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
            ]
        )
    )
    result = run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, plain], check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_httproute_validates(edge: tuple[Rendered, Path], tmp_path: Path) -> None:
    rendered, _ = edge
    validate_httproutes(rendered.of_kind("HTTPRoute"), tmp_path)


def test_hadolint_passes_on_the_edge_images() -> None:
    """The exporter's Dockerfile and the containers suite's stand-in, with deploy/hadolint.yaml."""
    dockerfiles = [
        REPO / "deploy" / "varnish" / "exporter.Dockerfile",
        REPO / "tests" / "containers" / "edge" / "Containerfile",
    ]
    run([tool("hadolint"), "--config", REPO / "deploy" / "hadolint.yaml", *dockerfiles])


def test_checkov_passes_on_the_edge(edge: tuple[Rendered, Path], tmp_path: Path) -> None:
    _, path = edge
    shutil.copy(path, tmp_path / path.name)
    result = checkov_kubernetes(tmp_path)
    assert result.returncode == 0, result.stdout[-5000:]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"edgeCache.purgePort": 8080}, "must differ"),
        ({"edgeCache.metrics.port": 8081}, "must differ"),
        ({"edgeCache.purge.acl": []}, "edgeCache.purge.acl is empty"),
        (
            {"edgeCache.terminationGracePeriodSeconds": 5},
            "must exceed edgeCache.preStopSleepSeconds",
        ),
        ({"edgeCache.autoscaling.minReplicas": 7}, "is above maxReplicas"),
        ({"edgeCache.image.tag": ""}, "edgeCache.metrics.image.tag is empty"),
        ({"edgeCache.storageSize": "lots"}, "storageSize"),
        ({"edgeCache.purge.acl": ["ingress-nginx"]}, "acl"),
        ({"edgeCache.purgeport": 1}, "purgeport"),
        ({"api.rateLimit.perMinute": 600}, "needs api.forwardedAllowIps to trust the edge"),
    ],
    ids=lambda v: str(v),
)
def test_bad_combinations_fail_the_install(values: dict[str, object], message: str) -> None:
    result = helm_template(values={"edgeCache.enabled": True, **values}, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


# --- deploy/k8s: the edge as a kustomize component ------------------------------------------

K8S_DIR = REPO / "deploy" / "k8s"
EDGE_COMPONENT = K8S_DIR / "components" / "edge-cache"


def test_the_edge_component_is_what_make_k8s_manifests_generates(tmp_path: Path) -> None:
    run(
        [
            Path(sys.executable).parent / "python",
            REPO / "deploy" / "tools" / "render_k8s.py",
            *("--helm", tool("helm"), "--values", K8S_DIR / "values.yaml"),
            *("--out", tmp_path / "covid-stats.yaml", "--edge-component", tmp_path / "edge"),
        ]
    )
    fresh = {p.name: p.read_text() for p in (tmp_path / "edge").iterdir()}
    committed = {p.name: p.read_text() for p in EDGE_COMPONENT.iterdir()}
    assert fresh == committed, "deploy/k8s/components/edge-cache is stale: make k8s-manifests"


def test_deploy_k8s_with_the_edge_component_is_the_chart_with_the_edge(
    tmp_path: Path,
) -> None:
    """deploy/k8s + components/edge-cache, built as a user's overlay would, == the chart rendered
    for the plain manifests with edgeCache.enabled, every resource whole (checksums included);
    it validates strictly."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = Path(os.path.relpath(K8S_DIR, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(base)],
                "components": [str(base / "components" / "edge-cache")],
            }
        )
    )
    built = Rendered(run([tool("kubectl"), "kustomize", overlay]).stdout)
    chart = Rendered(
        helm_template(
            K8S_DIR / "values.yaml", values={"edgeCache.enabled": True}, extra=["--no-hooks"]
        ).stdout.replace(
            "app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl"
        )
    )

    def by_id(rendered: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in rendered.docs}

    assert sorted(by_id(built)) == sorted(by_id(chart))
    for key, doc in by_id(chart).items():
        assert by_id(built)[key] == doc, key
    path = tmp_path / "built.yaml"
    path.write_text(yaml.safe_dump_all(built.docs))
    result = run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSIONS[-1], path],
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
