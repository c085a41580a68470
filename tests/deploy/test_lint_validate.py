"""helm lint --strict and helm template of every value set (deploy/helm/covid-stats/ci/),
validated by kubernetes-validate --strict for every supported Kubernetes version; deploy/k8s
(kubectl kustomize, its components) validates the same way and matches the chart (drift)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    COMPONENT_LABEL,
    CRD_KINDS,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    RELEASE,
    VALUE_SETS,
    VENV_BIN,
    Rendered,
    helm_template,
    images_of,
    operator_jobs,
    render,
    run,
    selected_service,
    tool,
    values_file,
)
from support import REPO


@pytest.fixture(scope="session")
def kustomized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Rendered, Path]:
    text = run([tool("kubectl"), "kustomize", K8S_DIR]).stdout
    path = tmp_path_factory.mktemp("kustomize") / "k8s.yaml"
    path.write_text(text)
    return Rendered(text), path


# The kustomize components of deploy/k8s, each built in an overlay of the plain manifests as a
# user's kustomization would use them (`components:`); the last ones all three, in both orders.
COMPONENTS = ("image-registry", "external-stores", "without-networkpolicies")
COMPONENT_OVERLAYS = {
    **{name: (name,) for name in COMPONENTS},
    "all": COMPONENTS,
    "all-reversed": tuple(reversed(COMPONENTS)),
    "edge-cache": ("edge-cache",),
    "edge-cache+image-registry": ("edge-cache", "image-registry"),
}


def kustomize_overlay(folder: Path, components: tuple[str, ...]) -> str:
    """`kubectl kustomize` of an overlay in ``folder``: deploy/k8s plus the components."""
    folder.mkdir(parents=True)
    base = Path(os.path.relpath(K8S_DIR, folder))
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(base)],
        "components": [str(base / "components" / name) for name in components],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return str(run([tool("kubectl"), "kustomize", folder]).stdout)


@pytest.fixture(scope="session")
def kustomized_components(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Rendered, Path]]:
    folder = tmp_path_factory.mktemp("components")
    result = {}
    for name, components in COMPONENT_OVERLAYS.items():
        text = kustomize_overlay(folder / name, components)
        path = folder / f"{name}.yaml"
        path.write_text(text)
        result[name] = (Rendered(text), path)
    return result


# -- helm lint, kubernetes-validate, kustomize, drift ------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(value_set: str) -> None:
    result = run([tool("helm"), "lint", "--strict", CHART, "--values", values_file(value_set)])
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_install_notes_render(value_set: str) -> None:
    result = run(
        [
            tool("helm"),
            "install",
            RELEASE,
            CHART,
            "--values",
            values_file(value_set),
            "--dry-run=client",
            "--namespace",
            "demo",
        ]
    )
    notes = result.stdout.partition("\nNOTES:\n")[2]
    assert f"http://{RELEASE}-api.demo.svc:80" in notes, result.stdout[-2000:]


def _kubernetes_validate(version: str, files: list[Path]) -> None:
    result = run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files], check=False
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and not re.search(rf"Couldn't find schema for kind ({'|'.join(CRD_KINDS)}) ", line)
    ]
    assert result.returncode == 0, "\n".join(problems)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_renders_and_plain_manifests_validate_strictly(
    version: str,
    renders: dict[str, tuple[Rendered, Path]],
    kustomized: tuple[Rendered, Path],
    kustomized_components: dict[str, tuple[Rendered, Path]],
) -> None:
    """Every value set's render, `kubectl kustomize deploy/k8s` and the overlays of its
    components, against the Kubernetes OpenAPI schemas of this version, unknown fields
    rejected (--strict)."""
    _kubernetes_validate(
        version,
        [path for _, path in renders.values()]
        + [kustomized[1]]
        + [path for _, path in kustomized_components.values()],
    )


def test_crd_resources_are_consistent(renders: dict[str, tuple[Rendered, Path]]) -> None:
    """What kubernetes-validate cannot check (no CRD schemas): the ServiceMonitors select a
    Service of ours by its labels and name its port; the PrometheusRule and the dashboard
    carry files/alerts.yaml and files/dashboard.json with the job names those ServiceMonitors
    give the targets in place of the files' placeholders, and nothing else changed."""
    rendered, _ = renders["ha"]
    monitors = rendered.of_kind("ServiceMonitor")
    assert monitors
    for monitor in monitors:
        service = selected_service(rendered, monitor)
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"].startswith("/")
    jobs = operator_jobs(rendered)
    dashboard = rendered.get("ConfigMap", f"{RELEASE}-dashboard")
    # The dashboard's uid and title are the release's (tests/deploy/test_day2.py).
    rendered_dashboard = json.loads(dashboard["data"]["covid-stats.json"])

    def filled(path: Path) -> str:
        text = path.read_text()
        for placeholder, component in (("@API_JOB@", "api"), ("@FETCHER_JOB@", "stats-fetcher")):
            assert placeholder in text, path.name
            text = text.replace(placeholder, jobs[component])
        if path.name == "dashboard.json":
            for placeholder, key in (("@DASHBOARD_UID@", "uid"), ("@DASHBOARD_TITLE@", "title")):
                assert placeholder in text
                text = text.replace(placeholder, rendered_dashboard[key])
        return text

    rules = yaml.safe_load(filled(CHART / "files" / "alerts.yaml"))
    (rule,) = rendered.of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == rules["groups"]
    assert rendered_dashboard == json.loads(filled(CHART / "files" / "dashboard.json"))


@pytest.mark.parametrize(
    "values",
    [{}, {"metrics.jobs.api": "a", "metrics.jobs.statsFetcher": "f"}],
    ids=["default-jobs", "renamed-jobs"],
)
def test_every_scrape_path_gives_the_same_job_names(values: dict[str, object]) -> None:
    """metrics.jobs decides the job label on both scrape paths: prometheus-operator's (the
    ServiceMonitors, derived as the operator does) and the pods' prometheus.io/job annotation
    (the chart README's scrape config), and it is never the release-prefixed Service name."""
    rendered = render(values={"metrics.serviceMonitor.enabled": True, **values})
    jobs = operator_jobs(rendered)
    assert set(jobs) == {"api", "stats-fetcher"}
    for component, job in jobs.items():
        (deployment,) = [
            d
            for d in rendered.of_kind("Deployment")
            if rendered.pod_labels(d).get(COMPONENT_LABEL) == component
        ]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/job"] == job, component
    if values:
        assert jobs == {"api": values["metrics.jobs.api"], "stats-fetcher": "f"}


def test_plain_manifests_match_the_chart(tmp_path: Path) -> None:
    """deploy/k8s/covid-stats.yaml is what `make k8s-manifests` renders from the chart now."""
    out = tmp_path / "covid-stats.yaml"
    run(
        [
            VENV_BIN / "python",
            REPO / "deploy" / "tools" / "render_k8s.py",
            "--helm",
            tool("helm"),
            "--values",
            K8S_DIR / "values.yaml",
            "--out",
            out,
        ]
    )
    committed = (K8S_DIR / "covid-stats.yaml").read_text()
    assert out.read_text() == committed, (
        "deploy/k8s/covid-stats.yaml differs from the chart: run `make k8s-manifests`"
    )


def test_plain_manifests_have_no_hooks_and_no_generated_secrets(
    kustomized: tuple[Rendered, Path],
) -> None:
    rendered, _ = kustomized
    for doc in rendered.docs:
        assert "helm.sh/hook" not in doc["metadata"].get("annotations", {}), doc["metadata"]
    assert not rendered.of_kind("Secret"), "plain manifests must not carry secrets"
    fetcher = rendered.get("Deployment", f"{RELEASE}-stats-fetcher")
    (init,) = rendered.pod_spec(fetcher)["initContainers"]
    assert init["args"][0] == "migrate", "the init container migrates where no hook Job does"


def _by_id(rendered: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered.docs}


@pytest.mark.parametrize(
    ("base_overlay", "retargeted_overlay"),
    [(None, "image-registry"), ("edge-cache", "edge-cache+image-registry")],
)
def test_image_registry_component_retargets_every_image_and_keeps_the_tags(
    kustomized: tuple[Rendered, Path],
    kustomized_components: dict[str, tuple[Rendered, Path]],
    base_overlay: str | None,
    retargeted_overlay: str,
) -> None:
    """Every image of deploy/k8s (and of deploy/k8s with the edge cache's component) is
    retargeted to one registry, its tag kept, nothing else changed."""
    component = yaml.safe_load(
        (K8S_DIR / "components" / "image-registry" / "kustomization.yaml").read_text()
    )
    new_names = {i["name"]: i["newName"] for i in component["images"]}
    base, _ = kustomized if base_overlay is None else kustomized_components[base_overlay]
    retargeted, _ = kustomized_components[retargeted_overlay]
    base_images = {image for d in base.workloads() for _, image in images_of(base, d)}
    assert {i.rpartition(":")[0] for i in base_images} <= set(new_names), (
        "an image of deploy/k8s the component does not retarget"
    )
    for doc in base.workloads():
        moved = _by_id(retargeted)[(doc["kind"], doc["metadata"]["name"])]
        for (name, image), (moved_name, moved_image) in zip(
            images_of(base, doc), images_of(retargeted, moved), strict=True
        ):
            repository, _, tag = image.rpartition(":")
            assert (moved_name, moved_image) == (name, f"{new_names[repository]}:{tag}")
    registries = {n.rsplit("/", 1)[0] for n in new_names.values()}
    assert len(registries) == 1, "one registry for every image"
    rest = _by_id(retargeted)
    for key, doc in _by_id(base).items():
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            assert rest[key] == doc, key


EXTERNAL_STORES = {
    "redis.enabled": False,
    "postgresql.enabled": False,
    "externalRedis.host": "redis.example.internal",
    "externalRedis.tls": True,
    "externalRedis.existingSecret": "covid-stats-redis",
    "externalDatabase.host": "postgresql.example.internal",
    "externalDatabase.sslmode": "require",
    "externalDatabase.existingSecret": "covid-stats-postgresql",
    # The plain manifests' most connections (see the component): 176.
    "externalDatabase.maxConnections": 176,
}


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """A document without what the plain manifests change or the stores' checksums differ
    in: the managed-by label and the checksum annotations."""
    doc = json.loads(json.dumps(doc))
    for meta in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        meta.get("labels", {}).pop("app.kubernetes.io/managed-by", None)
        annotations = meta.get("annotations", {})
        for key in [k for k in annotations if k.startswith("checksum/")]:
            del annotations[key]
    return doc


def test_external_stores_component_is_the_chart_with_external_stores(
    kustomized_components: dict[str, tuple[Rendered, Path]],
) -> None:
    """deploy/k8s + components/external-stores == the chart rendered for the plain manifests
    with externalRedis/externalDatabase at the component's placeholder hosts: the same
    resources (no StatefulSets, store Services, ServiceAccounts or policies) and the same
    DATABASE_URL and REDIS_URL in every container."""
    result = helm_template(K8S_DIR / "values.yaml", values=EXTERNAL_STORES, extra=["--no-hooks"])
    chart = {k: _comparable(d) for k, d in _by_id(Rendered(result.stdout)).items()}
    component, _ = kustomized_components["external-stores"]
    built = {k: _comparable(d) for k, d in _by_id(component).items()}
    assert sorted(built) == sorted(chart)
    for key, doc in chart.items():
        assert built[key] == doc, key
    assert not component.of_kind("StatefulSet")


def test_without_networkpolicies_component_removes_them_and_nothing_else(
    kustomized: tuple[Rendered, Path],
    kustomized_components: dict[str, tuple[Rendered, Path]],
) -> None:
    base = _by_id(kustomized[0])
    assert any(kind == "NetworkPolicy" for kind, _ in base)
    built = _by_id(kustomized_components["without-networkpolicies"][0])
    assert built == {k: d for k, d in base.items() if k[0] != "NetworkPolicy"}


def test_components_compose_in_any_order(
    kustomized_components: dict[str, tuple[Rendered, Path]],
) -> None:
    together = _by_id(kustomized_components["all"][0])
    assert together == _by_id(kustomized_components["all-reversed"][0])
    assert not [k for k in together if k[0] in {"NetworkPolicy", "StatefulSet"}]
    images = {
        i
        for d in kustomized_components["all"][0].workloads()
        for _, i in images_of(kustomized_components["all"][0], d)
    }
    assert all(i.startswith("registry.example/team/") for i in images), images
