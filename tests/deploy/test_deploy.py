"""The Kubernetes delivery (deploy/, skaffold.yaml, the Dockerfiles), checked with real tools.

- helm lint --strict and helm template of every value set (deploy/helm/covid-stats/ci/),
  validated by kubernetes-validate --strict for every supported Kubernetes version; the
  values schema rejects misspelt keys and wrong types; the install-time checks refuse bad
  configurations (connection budget, grace periods, conflicting stores). The HTTPRoute
  against the Gateway API's schemas (deploy/tools/validate_httproute.mjs).
- deploy/k8s: kubectl kustomize validates the same way and matches the chart (drift).
- skaffold.yaml validates against ../shared/schemas/skaffold-v4beta14.json.
- checkov (kubernetes, helm, dockerfile) and hadolint pass (skips: deploy/checkov.yaml).
- The images: multi-stage, a pinned slim base, a numeric non-root user, and a CMD that is
  exactly what the chart runs.
- The contract: the api and the fetcher run here with exactly the commands, arguments,
  environment and ports of their rendered containers (the chart's service host names
  pointed at the test servers), and answer on their probe paths and probe ports.
- Cluster smoke tests, when a kubeconfig names a cluster (else skipped, saying so).

The images are built and the chart's pods run from them in the containers suite
(tests/containers/, `make test-containers`); here their Dockerfiles are linted and their
commands run from the venv (where the same packages are installed).
"""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import importlib.util
import json
import os
import re
import shutil
import tarfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from covid_stats_api.serving.metrics_server import METRICS_PATH
from deploy_support import (
    CHART,
    COMPONENT_LABEL,
    CRD_KINDS,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    LIBRARY_ENV,
    LIBRARY_ENV_PREFIX,
    RELEASE,
    VALUE_SETS,
    VENV_BIN,
    Rendered,
    container_argv,
    container_env,
    container_port,
    dockerfile_stages,
    helm_template,
    last_instruction,
    nested_values,
    operator_jobs,
    optional_module,
    probes,
    render,
    run,
    selected_service,
    service_settings,
    set_args,
    stage_chain,
    tool,
    validate_httproutes,
    values_file,
)
from devstack.procs import free_port, wait_until
from stats_fetcher.config import DEFAULT_UPSTREAM_BASE_URL
from support import REPO, Process, Upstream, spawn

SKAFFOLD_SCHEMA = REPO.parent / "shared" / "schemas" / "skaffold-v4beta14.json"
DOCKERFILES = {
    "api": REPO / "services" / "api" / "Dockerfile",
    "stats-fetcher": REPO / "services" / "stats-fetcher" / "Dockerfile",
    "replay-upstream": REPO / "tools" / "replay-upstream" / "Dockerfile",
}
# The main container of each of our Deployments: (Deployment, container).
MAIN_CONTAINERS = {
    "api": (f"{RELEASE}-api", "api"),
    "stats-fetcher": (f"{RELEASE}-stats-fetcher", "stats-fetcher"),
    "replay-upstream": (f"{RELEASE}-replay-upstream", "replay-upstream"),
}


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Rendered, Path]]:
    """Every value set rendered once, and written to a file for the file-based tools."""
    folder = tmp_path_factory.mktemp("renders")
    result = {}
    for value_set in VALUE_SETS:
        rendered = render(values_file(value_set))
        path = folder / f"{value_set}.yaml"
        path.write_text(rendered.text)
        result[value_set] = (rendered, path)
    return result


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

    def filled(path: Path) -> str:
        text = path.read_text()
        for placeholder, component in (("@API_JOB@", "api"), ("@FETCHER_JOB@", "stats-fetcher")):
            assert placeholder in text, path.name
            text = text.replace(placeholder, jobs[component])
        return text

    rules = yaml.safe_load(filled(CHART / "files" / "alerts.yaml"))
    (rule,) = rendered.of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == rules["groups"]
    dashboard = rendered.get("ConfigMap", f"{RELEASE}-dashboard")
    assert json.loads(dashboard["data"]["covid-stats.json"]) == json.loads(
        filled(CHART / "files" / "dashboard.json")
    )


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


def test_image_registry_component_retargets_every_image_and_keeps_the_tags(
    kustomized: tuple[Rendered, Path],
    kustomized_components: dict[str, tuple[Rendered, Path]],
) -> None:
    component = yaml.safe_load(
        (K8S_DIR / "components" / "image-registry" / "kustomization.yaml").read_text()
    )
    new_names = {i["name"]: i["newName"] for i in component["images"]}
    base, _ = kustomized
    retargeted, _ = kustomized_components["image-registry"]
    base_images = {image for d in base.workloads() for _, image in _image_of(base, d)}
    assert {i.rpartition(":")[0] for i in base_images} <= set(new_names), (
        "an image of deploy/k8s the component does not retarget"
    )
    for doc in base.workloads():
        moved = _by_id(retargeted)[(doc["kind"], doc["metadata"]["name"])]
        for (name, image), (moved_name, moved_image) in zip(
            _image_of(base, doc), _image_of(retargeted, moved), strict=True
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
        for _, i in _image_of(kustomized_components["all"][0], d)
    }
    assert all(i.startswith("registry.example/team/") for i in images), images


# -- the values schema and the install-time checks ---------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api.worker": 3}, "additional properties 'worker' not allowed"),
        ({"api.workers": "two"}, "/api/workers"),
        ({"redis.auth.passwrd": "x"}, "additional properties 'passwrd' not allowed"),
        ({"postgresql.persistance": {"enabled": False}}, "'persistance' not allowed"),
        ({"statsFetcher.upstream.format": "xml"}, "/statsFetcher/upstream/format"),
        ({"statsFetcher.replica": 2}, "additional properties 'replica' not allowed"),
        ({"apii": {"workers": 1}}, "additional properties 'apii' not allowed"),
        ({"api.image.digest": "latest"}, "/api/image/digest"),
        ({"api.autoscaling.maxReplicas": 0}, "/api/autoscaling/maxReplicas"),
        ({"metrics.serviceMonitor.enabeld": True}, "'enabeld' not allowed"),
        ({"tracing.sampler": "sometimes"}, "/tracing/sampler"),
        ({"tracing.otlpEndpoint": "collector:4318"}, "/tracing/otlpEndpoint"),
        ({"api.accessLogSampleRate": 2}, "/api/accessLogSampleRate"),
        ({"api.podAnnotations": {"a": 1}}, "/api/podAnnotations/a"),
        ({"imagePullSecrets": [{"nam": "regcred"}]}, "/imagePullSecrets/0"),
        ({"imagePullSecrets": [""]}, "/imagePullSecrets/0"),
        ({"global.imageRegistry": "https://registry.example/"}, "/global/imageRegistry"),
        ({"redis.image.registry": "registry.example/"}, "/redis/image/registry"),
        ({"networkPolicy.api.from": [{"namespace": "ingress"}]}, "/networkPolicy/api/from/0"),
        (
            {"networkPolicy.api.from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
            "/networkPolicy/api/from/0",
        ),
        ({"networkPolicy.egress.dns.ports": [{"port": 53, "protocol": "ICMP"}]}, "/protocol"),
        ({"networkPolicy.egress.upstream.cidr": "0.0.0.0/0"}, "'cidr' not allowed"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(
    values: dict[str, object], message: str
) -> None:
    result = helm_template(values=values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"api.autoscaling.maxReplicas": 9},
            "PostgreSQL connection budget exceeded: the api may open (9 pods + 1 surge + 1 "
            "terminating) x 2 workers (api.workers) x 10 (api.dbPool.maxSize) = 220 "
            "connections, the fetcher (2 pods + 1 surge + 1 terminating) x 4 "
            "(statsFetcher.dbPoolMaxSize) = 16, the migration 1: 237 in all, but PostgreSQL "
            "allows 197",
        ),
        (
            {
                "postgresql.enabled": False,
                "externalDatabase.host": "db",
                "externalDatabase.existingSecret": "s",
                "externalDatabase.maxConnections": 50,
            },
            "but PostgreSQL allows 50 (externalDatabase.maxConnections)",
        ),
        (
            {"api.terminationGracePeriodSeconds": 25},
            "api.terminationGracePeriodSeconds (25) must exceed api.preStopSleepSeconds + "
            "api.gunicorn.gracefulTimeoutSeconds (5 + 20 = 25)",
        ),
        (
            {"statsFetcher.terminationGracePeriodSeconds": 20},
            "statsFetcher.terminationGracePeriodSeconds (20) must exceed "
            "statsFetcher.shutdownGraceSeconds",
        ),
        ({"externalDatabase.host": "db"}, "both postgresql.enabled and externalDatabase.host"),
        ({"externalRedis.host": "cache"}, "both redis.enabled and externalRedis.host"),
        ({"postgresql.enabled": False}, "externalDatabase.host is required"),
        (
            {"postgresql.enabled": False, "externalDatabase.host": "db"},
            "externalDatabase.existingSecret (a Secret holding the password) or "
            "externalDatabase.password is required",
        ),
        ({"redis.enabled": False}, "externalRedis.host is required"),
        ({"api.resources.requests.cpu": None}, "needs api.resources.requests.cpu"),
        (
            {"redis.maxmemory": "192mb"},
            "redis.maxmemory (192mb) must be set and at most 70% of "
            "redis.resources.limits.memory (256Mi, so at most 179mb)",
        ),
        (
            {"redis.resources.limits.memory": "1Gi", "redis.maxmemory": "1gb"},
            "redis.maxmemory (1gb) must be set and at most 70% of redis.resources.limits.memory "
            "(1Gi, so at most 716mb)",
        ),
        (
            {"api.autoscaling.targetMemoryUtilizationPercentage": 80},
            "api.autoscaling.targetMemoryUtilizationPercentage (80) must be null: the api's "
            "memory does not fall when its load does",
        ),
        (
            {"api.metrics.port": 8000},
            "api.metrics.port and api.port are both 8000: /metrics has a port of its own",
        ),
        (
            {"gitops.enabled": True},
            "set postgresql.auth.existingSecret, redis.auth.existingSecret, "
            "statsFetcher.refreshToken.existingSecret",
        ),
        (
            {
                "gitops.enabled": True,
                "postgresql.auth.existingSecret": "pg",
                "statsFetcher.refreshToken.enabled": False,
            },
            "cannot keep: a new one every render. Create the Secrets yourself (or with a "
            "secrets operator) and set redis.auth.existingSecret.",
        ),
    ],
)
def test_install_refuses_bad_configurations(values: dict[str, object], message: str) -> None:
    result = helm_template(values=values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert message in result.stderr, result.stderr


def test_values_carry_no_password() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["externalDatabase"]["password"] == ""
    assert values["externalRedis"]["password"] == ""
    assert not re.search(
        r"(?i)password:\s*\S+",
        (CHART / "values.yaml").read_text().replace('password: ""', "").replace("PasswordKey:", ""),
    ), "a default password in values.yaml"


# -- what the renders say -----------------------------------------------------------------------


def test_every_pod_meets_the_restricted_pod_security_standard(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """Non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault,
    a read-only root filesystem (the dev set's api excepted: skaffold syncs code into it),
    no service account token, requests and a memory limit, only restricted volume types."""
    allowed_volumes = {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected"}
    for value_set, (rendered, _) in renders.items():
        for doc in rendered.workloads():
            where = f"{value_set}: {doc['kind']}/{doc['metadata']['name']}"
            spec = rendered.pod_spec(doc)
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True, where
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            assert not spec.get("hostNetwork"), where
            assert not spec.get("hostPID"), where
            for volume in spec.get("volumes", []):
                assert set(volume) - {"name"} <= allowed_volumes, (where, volume)
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert sc["runAsNonRoot"] is True, where
                dev_api = value_set == "dev" and c["name"] == "api"
                assert sc["readOnlyRootFilesystem"] is (not dev_api), where
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
                assert "memory" in c["resources"]["limits"], where


def test_our_images_run_as_a_high_numeric_uid(renders: dict[str, tuple[Rendered, Path]]) -> None:
    rendered, _ = renders["dev"]
    for name, (deployment, _) in MAIN_CONTAINERS.items():
        spec = rendered.pod_spec(rendered.get("Deployment", deployment))
        assert spec["securityContext"]["runAsUser"] >= 10000, name


def test_long_running_containers_have_all_three_probes(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    for value_set, (rendered, _) in renders.items():
        for doc in rendered.of_kind("Deployment", "StatefulSet"):
            for c in rendered.pod_spec(doc)["containers"]:
                assert set(probes(c)) == {"startup", "liveness", "readiness"}, (
                    value_set,
                    doc["metadata"]["name"],
                )


def test_services_target_ports_their_pods_have(renders: dict[str, tuple[Rendered, Path]]) -> None:
    for value_set, (rendered, _) in renders.items():
        for service in rendered.of_kind("Service"):
            selector = service["spec"]["selector"]
            pods = [
                d
                for d in rendered.of_kind("Deployment", "StatefulSet")
                if selector.items() <= rendered.pod_labels(d).items()
            ]
            assert len(pods) == 1, (value_set, service["metadata"]["name"])
            containers = rendered.pod_spec(pods[0])["containers"]
            for port in service["spec"]["ports"]:
                assert any(
                    p.get("name") == port["targetPort"] for c in containers for p in c["ports"]
                ), (value_set, service["metadata"]["name"], port)


def test_rolling_updates_drop_no_requests(renders: dict[str, tuple[Rendered, Path]]) -> None:
    """The api leaves the endpoints during its preStop sleep, gunicorn then gets its graceful
    timeout, all within the termination grace period; no pod is taken before a new one is
    ready; a voluntary disruption takes one api pod at a time."""
    for value_set, (rendered, _) in renders.items():
        deployment = rendered.get("Deployment", f"{RELEASE}-api")
        spec = rendered.pod_spec(deployment)
        (api,) = spec["containers"]
        sleep = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
        graceful = int(
            container_env(rendered, api, _fake_secrets(rendered))[
                "GUNICORN_GRACEFUL_TIMEOUT_SECONDS"
            ]
        )
        assert sleep > 0
        assert spec["terminationGracePeriodSeconds"] > sleep + graceful, value_set
        # Idle connections outlast a load balancer's (60 s: ALB, ingress-nginx), silent new
        # ones stay bounded (a stopping worker drains for at most half of `graceful`).
        env = container_env(rendered, api, _fake_secrets(rendered))
        assert int(env["GUNICORN_KEEPALIVE_SECONDS"]) > 60, value_set
        assert 0 < float(env["HTTP_NEW_CONNECTION_TIMEOUT_SECONDS"]) <= 10, value_set
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        fetcher_spec = rendered.pod_spec(rendered.get("Deployment", f"{RELEASE}-stats-fetcher"))
        fetcher_env = container_env(
            rendered, fetcher_spec["containers"][0], secrets=_fake_secrets(rendered)
        )
        assert fetcher_spec["terminationGracePeriodSeconds"] > float(
            fetcher_env["SHUTDOWN_GRACE_SECONDS"]
        )
    rendered, _ = renders["default"]
    assert rendered.get("PodDisruptionBudget", f"{RELEASE}-api")["spec"]["maxUnavailable"] == 1
    hpa = rendered.get("HorizontalPodAutoscaler", f"{RELEASE}-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-api",
    }
    assert "replicas" not in rendered.get("Deployment", f"{RELEASE}-api")["spec"]
    # Scaled on CPU only: memory never falls, a memory target would never scale down.
    for value_set, (rendered, _) in renders.items():
        for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
            metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
            assert metrics == {"cpu"}, value_set


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
    metrics = _api_metrics_port(rendered)
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
    secrets = _fake_secrets(rendered)
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


def _annotations(rendered: Rendered, deployment: str) -> dict[str, str]:
    doc = rendered.get("Deployment", deployment)
    annotations: dict[str, str] = doc["spec"]["template"]["metadata"]["annotations"]
    return annotations


def _rolled(before: Rendered, after: Rendered) -> set[str]:
    """The Deployments and StatefulSets whose pod template changed (their pods roll)."""
    return {
        d["metadata"]["name"]
        for d in after.of_kind("Deployment", "StatefulSet")
        if d["spec"]["template"] != before.get(d["kind"], d["metadata"]["name"])["spec"]["template"]
    }


def _reading(rendered: Rendered, secret: str) -> set[str]:
    """The Deployments and StatefulSets with a container that reads ``secret``."""
    return {
        d["metadata"]["name"]
        for d in rendered.of_kind("Deployment", "StatefulSet")
        for c in rendered.pod_spec(d).get("initContainers", []) + rendered.pod_spec(d)["containers"]
        for item in c.get("env", [])
        if item.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret
    }


def test_checksums_roll_pods_when_their_config_or_secrets_change() -> None:
    """A change to a ConfigMap or to one Secret rolls the pods that read it, and only them."""
    api, fetcher = f"{RELEASE}-api", f"{RELEASE}-stats-fetcher"
    secrets = {
        "postgresql.auth.existingSecret": "pg",
        "redis.auth.existingSecret": "r",
        "statsFetcher.refreshToken.existingSecret": "t",
    }
    base = render(values=secrets)
    assert _rolled(base, render(values={**secrets, "api.logLevel": "DEBUG"})) == {api}
    assert _rolled(base, render(values={**secrets, "statsFetcher.fetchIntervalSeconds": 60})) == {
        fetcher
    }
    for key in secrets:
        changed = render(values={**secrets, key: "other"})
        assert _rolled(base, changed) == _reading(changed, "other"), key
        assert _reading(changed, "other"), key
    # Generated passwords (a new one every helm template): one value per render, the same in
    # the Secret and every checksum; a new password rolls only what reads it.
    for store, key, readers in (
        ("redis", "redis-password", {api, fetcher, f"{RELEASE}-redis"}),
        ("postgresql", "password", {api, fetcher, f"{RELEASE}-postgresql"}),
    ):
        generated = {k: v for k, v in secrets.items() if not k.startswith(f"{store}.")}
        first, second = render(values=generated), render(values=generated)
        secret = f"{RELEASE}-{store}"
        assert first.secret_value(secret, key) != second.secret_value(secret, key)
        assert _rolled(first, second) == _reading(second, secret) == readers, store
        annotation = "checksum/redis-secret" if store == "redis" else "checksum/database-secret"
        for rendered in (first, second):
            assert len({_annotations(rendered, d)[annotation] for d in (api, fetcher)}) == 1


def test_generated_credentials_and_connection_urls(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """In-chart stores: the chart generates the passwords (kept across upgrades by lookup,
    the PostgreSQL one even across uninstall), and Kubernetes assembles the URLs from them.
    External stores: only the Secrets you name, and URLs in their form (TLS, sslmode)."""
    rendered, _ = renders["default"]
    pg_secret = rendered.get("Secret", f"{RELEASE}-postgresql")
    assert pg_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    password = rendered.secret_value(f"{RELEASE}-postgresql", "password")
    assert password
    assert len(password) >= 32
    assert password.isalnum()
    api = rendered.container("Deployment", f"{RELEASE}-api", "api")
    env = container_env(rendered, api)
    assert password not in env["DATABASE_URL"], "the password is apart from the URL"
    urls = _service_urls(env)
    assert urls["database_url"] == (
        f"postgresql://covid_stats:{password}@{RELEASE}-postgresql:5432/covid_stats"
    )
    redis_password = rendered.secret_value(f"{RELEASE}-redis", "redis-password")
    assert urls["redis_url"] == f"redis://:{redis_password}@{RELEASE}-redis:6379/0"
    postgres = rendered.container("StatefulSet", f"{RELEASE}-postgresql", "postgresql")
    assert container_env(rendered, postgres)["POSTGRES_PASSWORD"] == password

    rendered, _ = renders["external"]
    assert not rendered.of_kind("Secret"), "external stores: the chart creates no Secret"
    env = container_env(
        rendered,
        rendered.container("Deployment", f"{RELEASE}-api", "api"),
        secrets=_fake_secrets(rendered),
    )
    urls = _service_urls(env)
    assert urls["database_url"] == (
        "postgresql://covid_stats_app:db-secret@covid-stats.postgres.example.internal:5432/"
        "covid_stats?sslmode=verify-full"
    )
    assert urls["redis_url"] == (
        "rediss://covid-stats:redis-secret@covid-stats.redis.example.internal:6380/0"
    )


def _service_urls(env: dict[str, str]) -> dict[str, str]:
    """The store URLs the api builds from a container's env (its settings class)."""
    from covid_stats_api.core.config import Settings

    fields = Settings.model_fields
    settings = Settings.model_validate(
        {k.lower(): v for k, v in env.items() if k.lower() in fields}
    )
    return {"database_url": settings.database_url, "redis_url": settings.redis_url}


def test_migration_job_is_a_hook_running_migrate(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    expected = {"default": "post-install,pre-upgrade", "external": "pre-install,pre-upgrade"}
    for value_set, hooks in expected.items():
        rendered, _ = renders[value_set]
        job = rendered.get("Job", f"{RELEASE}-migrate")
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == hooks
        account = rendered.get("ServiceAccount", f"{RELEASE}-migrate")
        assert account["metadata"]["annotations"]["helm.sh/hook"] == hooks
        assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            annotations["helm.sh/hook-weight"]
        )
        (container,) = rendered.pod_spec(job)["containers"]
        assert container["command"] + container["args"][:1] == ["stats-fetcher", "migrate"]
        assert rendered.pod_spec(job)["serviceAccountName"] == f"{RELEASE}-migrate"
    test_pod = renders["default"][0].get("Pod", f"{RELEASE}-test-api")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


ARGOCD = "argocd.argoproj.io/"


def _wave(doc: dict[str, Any]) -> int:
    return int(doc["metadata"].get("annotations", {}).get(f"{ARGOCD}sync-wave", "0"))


def _without_argocd(rendered: Rendered) -> list[dict[str, Any]]:
    """The documents with Argo CD's annotations taken out (and annotations left empty)."""
    docs = []
    for doc in rendered.docs:
        meta = dict(doc["metadata"])
        kept = {k: v for k, v in meta.get("annotations", {}).items() if not k.startswith(ARGOCD)}
        meta.pop("annotations", None)
        if kept:
            meta["annotations"] = kept
        docs.append({**doc, "metadata": meta})
    return docs


def test_gitops_renders_are_identical_and_sync_in_waves(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """ci/gitops-values.yaml: two renders are the same bytes (nothing random, nothing left
    to lookup), and Argo CD syncs the stores, then the migration (a Sync hook: Helm's
    pre-upgrade/post-install would map to PreSync/PostSync), then the workloads that need
    the schema. Plain Helm renders carry no Argo CD annotation."""
    rendered, _ = renders["gitops"]
    assert helm_template(values_file("gitops")).stdout == rendered.text
    assert not rendered.of_kind("Secret"), "a GitOps render generates no credential"
    stores = [
        d
        for d in rendered.of_kind("StatefulSet", "Service")
        if d["metadata"]["labels"][COMPONENT_LABEL] in {"redis", "postgresql"}
    ]
    assert {d["kind"] for d in stores} == {"StatefulSet", "Service"}
    job = rendered.get("Job", f"{RELEASE}-migrate")
    account = rendered.get("ServiceAccount", f"{RELEASE}-migrate")
    for hook in (job, account):
        annotations = hook["metadata"]["annotations"]
        assert annotations[f"{ARGOCD}hook"] == "Sync", annotations
        assert "helm.sh/hook" in annotations, "Helm's own hooks stay for helm install/upgrade"
    assert _wave(account) <= _wave(job)
    workloads = [
        rendered.get("Deployment", f"{RELEASE}-api"),
        rendered.get("Deployment", f"{RELEASE}-stats-fetcher"),
    ]
    assert max(_wave(d) for d in stores) < _wave(job) < min(_wave(d) for d in workloads)
    fetcher = rendered.pod_spec(workloads[1])
    assert fetcher["initContainers"][0]["args"][0] == "migrate"

    for value_set in ("default", "external", "ha", "dev"):
        assert ARGOCD not in renders[value_set][0].text, value_set
    # Apart from Argo CD's annotations, gitops.enabled changes nothing.
    plain = render(values_file("gitops"), values={"gitops.enabled": False})
    assert _without_argocd(rendered) == plain.docs
    # External stores: the Secret the chart makes of a password comes before the migration.
    external = render(
        values_file("gitops"),
        values={
            "postgresql.enabled": False,
            "externalDatabase.host": "db",
            "externalDatabase.password": "p",
            "externalDatabase.maxConnections": 200,
        },
    )
    secret = external.get("Secret", f"{RELEASE}-external-database")
    assert _wave(secret) < _wave(external.get("Job", f"{RELEASE}-migrate"))


_REDIS_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_QUANTITY_UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "M": 10**6, "G": 10**9}


def _fake_redis_cli(folder: Path, reply: str) -> dict[str, str]:
    """A PATH where redis-cli prints ``reply`` (as redis-cli prints PONG or an error)."""
    folder.mkdir(exist_ok=True)
    cli = folder / "redis-cli"
    cli.write_text(f"#!/bin/sh\nprintf '%s\\n' {reply!r}\n")
    cli.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_redis_keeps_room_to_fork_and_lives_through_loading(
    renders: dict[str, tuple[Rendered, Path]], tmp_path: Path
) -> None:
    """maxmemory leaves 30% of the memory limit for the snapshot fork (every value set), and
    the liveness probe accepts -LOADING (Redis loading its snapshot) where readiness waits
    for PONG: the probe commands run here against a stand-in redis-cli."""
    for value_set, (rendered, _) in renders.items():
        if not (statefulset := rendered.maybe("StatefulSet", f"{RELEASE}-redis")):
            continue
        (redis,) = rendered.pod_spec(statefulset)["containers"]
        maxmemory = redis["args"][redis["args"].index("--maxmemory") + 1]
        number, unit = re.fullmatch(r"([0-9]+)([a-z]*)", maxmemory).groups()  # type: ignore[union-attr]
        limit = re.fullmatch(r"([0-9]+)([A-Za-z]*)", redis["resources"]["limits"]["memory"])
        assert limit, redis["resources"]
        limit_bytes = int(limit[1]) * _QUANTITY_UNITS[limit[2]]
        assert 0 < int(number) * _REDIS_UNITS[unit] <= 0.7 * limit_bytes, value_set
    rendered, _ = renders["default"]
    redis = rendered.container("StatefulSet", f"{RELEASE}-redis", "redis")
    outcomes = {}
    for name, reply in {
        "pong": "PONG",
        "loading": "LOADING Redis is loading the dataset in memory",
        "down": "Could not connect to Redis at 127.0.0.1:6379: Connection refused",
        "auth": "NOAUTH Authentication required.",
    }.items():
        env = _fake_redis_cli(tmp_path / name, reply)
        outcomes[name] = {
            kind: run(probe["exec"]["command"], check=False, env=env).returncode == 0
            for kind, probe in probes(redis).items()
            if "exec" in probe
        }
    assert outcomes == {
        "pong": {"liveness": True, "readiness": True},
        "loading": {"liveness": True, "readiness": False},
        "down": {"liveness": False, "readiness": False},
        "auth": {"liveness": False, "readiness": False},
    }


def test_postgresql_has_a_memory_backed_dev_shm_of_the_size_asked(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["postgresql"]
    for size, rendered in (
        (values["shmSizeLimit"], renders["default"][0]),
        ("1Gi", render(values={"postgresql.shmSizeLimit": "1Gi"})),
    ):
        statefulset = rendered.get("StatefulSet", f"{RELEASE}-postgresql")
        (container,) = rendered.pod_spec(statefulset)["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        volumes = {v["name"]: v for v in rendered.pod_spec(statefulset)["volumes"]}
        assert volumes[mount["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": size}
    assert values["shmSizeLimit"] != "64Mi", "no bigger than the runtime's own /dev/shm"


def _connections_at_most(rendered: Rendered) -> tuple[int, int]:
    """(the PostgreSQL connections the rendered services may hold at once during a rolling
    update: running pods, the surge starting and as many pods terminating, their pools still
    open; the connections the rendered PostgreSQL allows them)."""
    total = 1  # the migration
    for name, pods in (
        (f"{RELEASE}-api", rendered.get("HorizontalPodAutoscaler", f"{RELEASE}-api")),
        (f"{RELEASE}-stats-fetcher", None),
    ):
        deployment = rendered.get("Deployment", name)
        running = pods["spec"]["maxReplicas"] if pods else deployment["spec"]["replicas"]
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        (container,) = rendered.pod_spec(deployment)["containers"]
        env = container_env(rendered, container)
        per_pod = int(env.get("WEB_CONCURRENCY", "1")) * int(env["DB_POOL_MAX_SIZE"])
        total += (running + 2 * surge) * per_pod
    postgres = rendered.container("StatefulSet", f"{RELEASE}-postgresql", "postgresql")
    args = dict(a.split("=", 1) for a in postgres["args"] if "=" in a)
    allowed = int(args["max_connections"]) - int(args["superuser_reserved_connections"])
    return total, allowed


def test_connection_budget_counts_pods_terminating_during_a_rollout() -> None:
    """The largest api the default PostgreSQL takes, terminating pods counted, is accepted;
    one pod more is refused."""
    fits = render(values={"api.autoscaling.maxReplicas": 7})
    total, allowed = _connections_at_most(fits)
    assert total == allowed, (total, allowed)
    result = helm_template(values={"api.autoscaling.maxReplicas": 8}, check=False)
    assert "PostgreSQL connection budget exceeded" in result.stderr, result.stderr


def test_every_setting_is_set_by_the_chart(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """The services' settings classes are their contract: each setting has a value in the
    chart (so a setting another change adds fails here until the chart learns it)."""
    settings = service_settings()
    rendered, _ = renders["default"]
    for service in ("api", "stats-fetcher"):
        deployment, container = MAIN_CONTAINERS[service]
        env = container_env(rendered, rendered.container("Deployment", deployment, container))
        assert set(env) - LIBRARY_ENV[service] == settings[service], service


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_configmaps_set_only_variables_the_services_read(
    renders: dict[str, tuple[Rendered, Path]], value_set: str
) -> None:
    """Each key of a service's ConfigMap is a setting of its settings class (or a variable
    its libraries read): a misspelt or removed setting fails here, not silently in a pod."""
    settings = service_settings()
    rendered, _ = renders[value_set]
    for service in ("api", "stats-fetcher"):
        configmap = rendered.get("ConfigMap", f"{RELEASE}-{service}")
        unknown = {
            name
            for name in configmap["data"]
            if name not in settings[service] | LIBRARY_ENV[service]
            and not name.startswith(LIBRARY_ENV_PREFIX)
        }
        assert not unknown, f"{service}: {sorted(unknown)}"


def test_tracing_is_off_by_default_and_one_endpoint_turns_it_on_for_both_services(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    default, _ = renders["default"]
    traced = render(
        values={
            "tracing.otlpEndpoint": "http://otel-collector.observability:4318",
            "tracing.samplerArg": 0.25,
        }
    )
    for deployment, container in (MAIN_CONTAINERS["api"], MAIN_CONTAINERS["stats-fetcher"]):
        off = container_env(default, default.container("Deployment", deployment, container))
        assert not [name for name in off if name.startswith("OTEL_")], deployment
        on = container_env(traced, traced.container("Deployment", deployment, container))
        assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
        assert on["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert on["OTEL_TRACES_SAMPLER_ARG"] == "0.25"


def test_replay_upstream_is_what_the_fetcher_reads_when_enabled(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    rendered, _ = renders["dev"]
    env = container_env(
        rendered, rendered.container("Deployment", f"{RELEASE}-stats-fetcher", "stats-fetcher")
    )
    assert env["UPSTREAM_BASE_URL"] == f"http://{RELEASE}-replay-upstream:8001/"
    rendered, _ = renders["default"]
    env = container_env(
        rendered, rendered.container("Deployment", f"{RELEASE}-stats-fetcher", "stats-fetcher")
    )
    # The chart's default upstream is the fetcher's own default (the archived CTP files).
    assert env["UPSTREAM_BASE_URL"] == DEFAULT_UPSTREAM_BASE_URL
    assert rendered.maybe("Deployment", f"{RELEASE}-replay-upstream") is None


def _fake_secrets(rendered: Rendered) -> dict[tuple[str, str], str]:
    """Values for the Secrets a value set names but does not create (existingSecret)."""
    fake = {}
    for doc in rendered.workloads():
        spec = rendered.pod_spec(doc)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and rendered.maybe("Secret", ref["name"]) is None:
                    short = "db" if "database" in ref["name"] else ref["name"].split("-")[-2]
                    fake[(ref["name"], ref["key"])] = f"{short}-secret"
    return fake


# -- skaffold ---------------------------------------------------------------------------------


def _skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return config


@pytest.mark.skipif(
    not SKAFFOLD_SCHEMA.is_file(),
    reason=f"{SKAFFOLD_SCHEMA} is absent (../shared is not beside the repository)",
)
def test_skaffold_yaml_validates_against_its_schema() -> None:
    jsonschema = optional_module("jsonschema")
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    config = _skaffold()
    errors = [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(config)]
    assert not errors, "\n".join(errors)
    assert config["apiVersion"] == "skaffold/v4beta14"
    # The validation means something: a misspelt key is an error.
    config["build"]["artifacts"][0]["docker"]["dockerfil"] = "Dockerfile"
    assert list(validator.iter_errors(config))


def test_skaffold_builds_our_images_and_injects_them_into_the_chart() -> None:
    config = _skaffold()
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]) == CHART
    templates = release["setValueTemplates"]
    for key, name in (
        ("api", "api"),
        ("statsFetcher", "stats-fetcher"),
        ("replayUpstream", "replay-upstream"),
    ):
        image = values[key]["image"]["repository"]
        artifact = artifacts[image]
        assert artifact["context"] == "."
        assert (REPO / artifact["docker"]["dockerfile"]) == DOCKERFILES[name]
        variable = image.replace("-", "_")
        assert templates[f"{key}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{key}.image.tag"] == (
            f"{{{{.IMAGE_TAG_{variable}}}}}@{{{{.IMAGE_DIGEST_{variable}}}}}"
        )
    # The injected form of an image reference renders (the schema accepts tag@digest).
    digest = "sha256:" + "0" * 64
    rendered = render(
        values={
            "api.image.repository": "registry.example/covid-stats-api",
            "api.image.tag": f"abc123@{digest}",
        }
    )
    api = rendered.container("Deployment", f"{RELEASE}-api", "api")
    assert api["image"] == f"registry.example/covid-stats-api:abc123@{digest}"
    forwards = config["portForward"]
    assert forwards == [
        {
            "resourceType": "service",
            "resourceName": f"{RELEASE}-api",
            "port": values["api"]["service"]["port"],
            "localPort": 8000,
        }
    ]
    # The dev profile: the api's dev target with file sync into its site-packages (the same
    # Python as the image's), the dev values (one worker, reload, the replay upstream).
    (profile,) = config["profiles"]
    assert profile["activation"] == [{"command": "dev"}]
    patches = {p["path"]: p["value"] for p in profile["patches"]}
    assert patches["/build/artifacts/0/docker/target"] == "dev"
    assert config["build"]["artifacts"][0]["image"] == "covid-stats-api"
    python = re.search(r"python:(\d+\.\d+)\.", DOCKERFILES["api"].read_text())
    assert python
    for rule in patches["/build/artifacts/0/sync"]["manual"]:
        assert rule["dest"] == f"/opt/venv/lib/python{python[1]}/site-packages"
        assert (REPO / rule["src"].split("/**")[0]).is_dir(), rule
    dev_values = yaml.safe_load(values_file("dev").read_text())
    assert patches["/deploy/helm/releases/0/valuesFiles"] == [
        str(values_file("dev").relative_to(REPO))
    ]
    assert dev_values["api"]["workers"] == 1
    assert dev_values["api"]["reload"] is True
    assert dev_values["replayUpstream"]["enabled"] is True
    stages = {s["name"] for s in dockerfile_stages(DOCKERFILES["api"])}
    assert {"dev", "runtime"} <= stages


# -- registries and pull secrets ----------------------------------------------------------------

# The value blocks holding an image, and the workloads running it (kind, name, container).
IMAGE_BLOCKS = ("api", "statsFetcher", "replayUpstream", "redis", "postgresql")
ALL_WORKLOADS_ON = {
    "replayUpstream.enabled": True,
    "migration.enabled": True,
    "tests.enabled": True,
}


def _image_of(rendered: Rendered, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(container name, image) of every container of a workload, init containers included."""
    spec = rendered.pod_spec(doc)
    return [(c["name"], c["image"]) for c in spec.get("initContainers", []) + spec["containers"]]


def _block_of_container(doc: dict[str, Any], container: str) -> str:
    """The value block whose image a container runs: the component label says which, the
    migration, test and init containers run the fetcher's or the api's."""
    component = doc["metadata"]["labels"][COMPONENT_LABEL]
    return {
        "api": "api",
        "test": "api",
        "stats-fetcher": "statsFetcher",
        "migrate": "statsFetcher",
        "replay-upstream": "replayUpstream",
        "redis": "redis",
        "postgresql": "postgresql",
    }[component]


def _expected_image(values: dict[str, Any], block: str, app_version: str) -> str:
    image = values[block]["image"]
    registry = image.get("registry") or values.get("global", {}).get("imageRegistry", "")
    ref = f"{image['repository']}:{image['tag'] or app_version}"
    if registry:
        ref = f"{registry}/{ref}"
    if image["digest"]:
        ref = f"{ref}@{image['digest']}"
    return ref


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"global.imageRegistry": "registry.example:5000/team"},
        {
            "global.imageRegistry": "registry.example/team",
            "api.image.registry": "ghcr.io/us",
            "redis.image.registry": "mirror.example",
            "postgresql.image.digest": "sha256:" + "1" * 64,
        },
        {"statsFetcher.image.registry": "ghcr.io/us"},
    ],
    ids=["defaults", "global", "per-image-wins", "per-image-alone"],
)
def test_images_come_from_the_registry_the_values_name(overrides: dict[str, object]) -> None:
    """Every container's image is [<registry>/]<repository>:<tag>[@<digest>], the registry
    being the image's own, else global.imageRegistry, else none: with the defaults the
    references are the local names the containers suite runs (covid-stats-api:<appVersion>)."""
    rendered = render(values={**ALL_WORKLOADS_ON, **overrides})
    values = nested_values({**ALL_WORKLOADS_ON, **overrides})
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for block in IMAGE_BLOCKS:
        defaults[block]["image"].update(values.get(block, {}).get("image", {}))
    defaults["global"].update(values.get("global", {}))
    app_version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    seen = set()
    for doc in rendered.workloads():
        for container, image in _image_of(rendered, doc):
            block = _block_of_container(doc, container)
            seen.add(block)
            assert image == _expected_image(defaults, block, app_version), (
                doc["metadata"]["name"],
                container,
            )
    assert seen == set(IMAGE_BLOCKS)
    if not overrides:
        assert rendered.container("Deployment", f"{RELEASE}-api", "api")["image"] == (
            f"covid-stats-api:{app_version}"
        )


def test_make_images_tags_the_images_as_the_default_values_name_them() -> None:
    """`make images` (deploy/tools/build_images.py reads values.yaml without a YAML parser)
    builds exactly the references the default render runs: the containers suite needs them."""
    spec = importlib.util.spec_from_file_location(
        "build_images", REPO / "deploy" / "tools" / "build_images.py"
    )
    assert spec is not None
    assert spec.loader is not None
    build_images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_images)
    rendered = render(values={"replayUpstream.enabled": True})
    expected = {
        block: rendered.container("Deployment", f"{RELEASE}-{name}", name)["image"]
        for block, name in (
            ("api", "api"),
            ("statsFetcher", "stats-fetcher"),
            ("replayUpstream", "replay-upstream"),
        )
    }
    assert build_images.image_refs() == expected


def test_pull_secrets_take_names_or_objects_and_reach_every_pod() -> None:
    rendered = render(
        values={**ALL_WORKLOADS_ON, "imagePullSecrets": ["regcred", {"name": "mirror-cred"}]}
    )
    expected = [{"name": "regcred"}, {"name": "mirror-cred"}]
    workloads = rendered.workloads()
    assert {d["kind"] for d in workloads} == {"Deployment", "StatefulSet", "Job", "Pod"}
    for doc in workloads:
        assert rendered.pod_spec(doc)["imagePullSecrets"] == expected, doc["metadata"]["name"]
    bare = render()
    for doc in bare.workloads():
        assert "imagePullSecrets" not in bare.pod_spec(doc), doc["metadata"]["name"]


def test_helm_test_pod_is_scheduled_like_the_api() -> None:
    """The `helm test` pod runs the api's image: it gets the api's pull secrets, node
    selector, tolerations and affinity (private registries, tainted or dedicated nodes)."""
    scheduling = {
        "api.nodeSelector": {"pool": "web"},
        "api.tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web"}],
        "api.affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["x"]}]}
                    ]
                }
            }
        },
        "imagePullSecrets": [{"name": "regcred"}],
    }
    rendered = render(values=scheduling)
    api = rendered.pod_spec(rendered.get("Deployment", f"{RELEASE}-api"))
    (test_pod,) = rendered.of_kind("Pod")
    spec = rendered.pod_spec(test_pod)
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert spec[key] == api[key], key
    bare = render().of_kind("Pod")[0]["spec"]
    assert not {"imagePullSecrets", "nodeSelector", "tolerations", "affinity"} & set(bare)


def test_a_tag_with_a_digest_renders_alone_and_is_refused_with_a_digest_too() -> None:
    """skaffold sets `<tag>@<digest>` as the tag: fine alone, refused with `digest` as well
    (the reference would carry two digests)."""
    pinned = "0.1.0@sha256:" + "a" * 64
    digest = "sha256:" + "b" * 64
    for block in IMAGE_BLOCKS:
        result = helm_template(
            values={
                "replayUpstream.enabled": True,
                f"{block}.image.tag": pinned,
                f"{block}.image.digest": digest,
            },
            check=False,
        )
        assert result.returncode != 0, block
        assert (
            f"{block}.image.tag ({pinned}) already pins a digest and {block}.image.digest "
            f"({digest}) is set too" in result.stderr
        ), result.stderr
    rendered = render(values={"api.image.tag": pinned})
    assert rendered.container("Deployment", f"{RELEASE}-api", "api")["image"].endswith(pinned)


# -- publishing: Chart.yaml, the README's parameter table, the package -------------------------


def _chart_readme(*args: str) -> Any:
    return run(
        [VENV_BIN / "python", REPO / "deploy" / "tools" / "chart_readme.py", *args], check=False
    )


def test_chart_readme_parameter_table_is_generated_from_values() -> None:
    """The README's table is what `make chart-readme` writes from values.yaml now (drift)."""
    result = _chart_readme("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def test_chart_readme_parameter_table_lists_every_value_with_its_default() -> None:
    """Every value of values.yaml has a row (or a documented map above it has one) showing
    its default, and every `# --` comment's first words are in the table."""
    text = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    table = readme.split("<!-- parameters:start -->")[1].split("<!-- parameters:end -->")[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        key, default, description = (c.strip() for c in line.strip("|").split(" | "))
        rows[key.strip("`")] = (default, description)
    for path, value in _leaves(yaml.safe_load(text)):
        parents = [".".join(path.split(".")[:n]) for n in range(len(path.split(".")), 0, -1)]
        row = next((p for p in parents if p in rows), None)
        assert row is not None, f"{path} has no row"
        if row == path:
            assert rows[row][0] == f"`{json.dumps(value)}`", path
    for match in re.finditer(r"(?m)^ *# -- (.{1,30})", text):
        first = match[1].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        assert any(first in description for _, description in rows.values()), match[1]


def test_chart_yaml_carries_artifact_hub_metadata() -> None:
    """Artifact Hub's annotations parse, and artifacthub.io/images lists exactly the images
    the default values run (replay upstream on, so that every image is rendered)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    annotations = chart["annotations"]
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    rendered = render(values={"replayUpstream.enabled": True})
    expected = {image for doc in rendered.workloads() for _, image in _image_of(rendered, doc)}
    assert {i["image"] for i in images} == expected
    assert len({i["name"] for i in images}) == len(images)
    for change in yaml.safe_load(annotations["artifacthub.io/changes"]):
        assert change["kind"] in {"added", "changed", "deprecated", "removed", "fixed", "security"}
        assert change["description"]
    for link in yaml.safe_load(annotations["artifacthub.io/links"]):
        assert set(link) == {"name", "url"}, link
        assert link["url"].startswith("https://"), link
    assert annotations["artifacthub.io/prerelease"] in {"true", "false"}
    assert all(isinstance(v, str) for v in annotations.values()), "annotations are strings"


def test_chart_icon_is_the_api_favicon(tmp_path: Path) -> None:
    """Chart.yaml's icon is a data: URL of the page's favicon, byte for byte (what `make
    chart-readme` writes), and --check fails when the favicon changes and the icon does not."""
    icon = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["icon"])
    media_type, _, data = icon.removeprefix("data:").partition(";base64,")
    assert icon.startswith("data:"), icon[:40]
    assert media_type == "image/svg+xml", icon[:40]
    favicon = REPO / "services" / "api" / "src" / "covid_stats_api" / "static" / "favicon.svg"
    assert base64.b64decode(data, validate=True) == favicon.read_bytes()
    other = tmp_path / "favicon.svg"
    other.write_bytes(favicon.read_bytes().replace(b"#1d4ed8", b"#b91c1c"))
    result = _chart_readme("--check", "--favicon", str(other))
    assert result.returncode == 1
    assert "Chart.yaml: the icon is not favicon.svg" in result.stdout


def test_helm_package_holds_the_chart_and_leaves_out_ci_and_test_files(tmp_path: Path) -> None:
    """`helm package` (what `make chart-package` runs and `helm push` uploads): the templates,
    values, schema, README and the monitoring files, not ci/ nor files/*.test.yaml
    (.helmignore)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    run([tool("helm"), "package", CHART, "--destination", tmp_path])
    package = tmp_path / f"{chart['name']}-{chart['version']}.tgz"
    with tarfile.open(package) as archive:
        names = {n.partition("/")[2] for n in archive.getnames()}
    sources = {str(p.relative_to(CHART)) for p in CHART.rglob("*") if p.is_file()}
    templates = {n for n in sources if n.startswith("templates/")}
    expected = templates | {
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "README.md",
        "files/alerts.yaml",
        "files/dashboard.json",
        ".helmignore",
    }
    assert expected <= names, sorted(expected - names)
    assert not {n for n in names if n.startswith("ci/") or n.endswith(".test.yaml")}, names
    assert names <= sources, sorted(names - sources)
    # The package installs as the directory does.
    assert helm_template_of(package) == helm_template_of(CHART)


def helm_template_of(chart: Path) -> str:
    """The render of a chart directory or package, with Secrets of yours (nothing random)."""
    own_secrets = {
        "postgresql.auth.existingSecret": "pg",
        "redis.auth.existingSecret": "r",
        "statsFetcher.refreshToken.existingSecret": "t",
    }
    return str(run([tool("helm"), "template", RELEASE, chart, *set_args(own_secrets)]).stdout)


# -- the images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_multi_stage_slim_pinned_and_non_root(name: str) -> None:
    stages = dockerfile_stages(DOCKERFILES[name])
    assert len(stages) >= 2, "multi-stage"
    named = {s["name"] for s in stages}
    for stage in stages:
        base = stage["base"]
        assert base in named or re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", base), base
    final = stage_chain(stages, len(stages) - 1)
    assert final[-1]["base"].startswith("python:")
    user = last_instruction(final, "USER")
    assert user
    assert re.fullmatch(r"\d+:\d+", user), user
    assert int(user.split(":")[0]) >= 10000
    for stage in final:
        for instruction, rest in stage["instructions"]:
            text = f"{instruction} {rest}"
            assert not re.search(r"apt-get|apk |gcc|build-essential|g\+\+|make ", text), text
            if instruction == "COPY" and "--from=" in rest:
                source = re.search(r"--from=(\S+)", rest)
                assert source, text
                assert source[1] == "build", text
    (build,) = [s for s in stages if s["name"] == "build"]
    assert "--only-binary=:all:" in " ".join(rest for _, rest in build["instructions"])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_cmd_is_what_the_chart_runs(
    name: str, renders: dict[str, tuple[Rendered, Path]]
) -> None:
    stages = dockerfile_stages(DOCKERFILES[name])
    cmd = last_instruction(stage_chain(stages, len(stages) - 1), "CMD")
    assert cmd
    assert last_instruction(stage_chain(stages, len(stages) - 1), "ENTRYPOINT") is None
    rendered, _ = renders["default" if name != "replay-upstream" else "dev"]
    deployment, container = MAIN_CONTAINERS[name]
    c = rendered.container("Deployment", deployment, container)
    args = list(c["args"])
    if "--reload" in args:  # the dev set adds it
        args.remove("--reload")
    assert json.loads(cmd) == c["command"] + args


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything else (.venv, .git, .local) stays out"
    for dockerfile in DOCKERFILES.values():
        for instruction, rest in (
            i for s in dockerfile_stages(dockerfile) for i in s["instructions"]
        ):
            if instruction == "COPY" and "--from=" not in rest:
                source = rest.split()[0]
                assert (REPO / source).exists(), source
                assert any(
                    line.startswith("!") and source.startswith(line[1:].split("*")[0].rstrip("/"))
                    for line in lines
                ), f"{source} is not sent to the build"


def test_hadolint_passes() -> None:
    run([tool("hadolint"), "--config", REPO / "deploy" / "hadolint.yaml", *DOCKERFILES.values()])


# -- checkov ------------------------------------------------------------------------------------


def _checkov(args: list[str | Path]) -> tuple[int, list[dict[str, Any]], str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "BC_SKIP_MAPPING": "TRUE"}
    result = run([tool("checkov"), *args, "-o", "json"], check=False, env=env, cwd=REPO)
    reports: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    text, index = result.stdout, 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        reports += value if isinstance(value, list) else [value]
    return result.returncode, reports, result.stderr


def test_checkov_passes(renders: dict[str, tuple[Rendered, Path]], tmp_path: Path) -> None:
    """kubernetes (every render and deploy/k8s), helm (the chart) and dockerfile, with the
    skips of deploy/checkov.yaml; the dev set also skips CKV_K8S_22 (read-only root
    filesystem: skaffold syncs code into its api). Both runs at once: checkov is slow to start."""
    config = REPO / "deploy" / "checkov.yaml"
    scans = tmp_path / "renders"
    scans.mkdir()
    dev = tmp_path / "dev"
    dev.mkdir()
    for value_set, (_, path) in renders.items():
        shutil.copy(path, (dev if value_set == "dev" else scans) / path.name)
    skips = yaml.safe_load(config.read_text())["skip-check"]
    main: list[str | Path] = [
        "--config-file",
        config,
        "--framework",
        "kubernetes",
        "helm",
        "dockerfile",
        "-d",
        scans,
        "-d",
        K8S_DIR,
        "-d",
        CHART.parent,
        *[a for d in DOCKERFILES.values() for a in ("-d", d.parent)],
    ]
    dev_run: list[str | Path] = [
        "--config-file",
        config,
        "--framework",
        "kubernetes",
        "--skip-check",
        ",".join([*skips, "CKV_K8S_22"]),
        "-d",
        dev,
    ]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_checkov, [main, dev_run]))
    frameworks: set[str] = set()
    for returncode, reports, stderr in results:
        failures = [
            f"{r['check_type']}: {f['check_id']} {f['check_name']} {f['resource']} "
            f"({f['file_path']})"
            for r in reports
            for f in r["results"]["failed_checks"]
        ]
        assert not failures, "\n".join(failures)
        assert all(r["summary"]["parsing_errors"] == 0 for r in reports), reports
        assert returncode == 0, stderr[-3000:]
        frameworks |= {r["check_type"] for r in reports if r["summary"]["passed"]}
    assert frameworks == {"kubernetes", "helm", "dockerfile"}


# -- the contract: the rendered containers, run here ----------------------------------------------


def _map_service_urls(
    env: dict[str, str], rendered: Rendered, local: dict[str, str]
) -> dict[str, str]:
    """Point every URL whose host is one of the chart's Services at the local server of that
    component, after checking the URL names the Service's port."""
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    mapped = dict(env)
    for name, value in env.items():
        parts = urllib.parse.urlsplit(value)
        if not parts.scheme or parts.hostname not in services:
            continue
        service = services[parts.hostname]
        assert parts.port in {p["port"] for p in service["spec"]["ports"]}, (name, value)
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        mapped[name] = local[component]
    return mapped


def _map_volumes(env: dict[str, str], container: dict[str, Any], scratch: Path) -> dict[str, str]:
    """Paths in the container's emptyDir mounts -> local scratch folders (created empty, as
    an emptyDir is)."""
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    mapped = dict(env)
    for name, value in env.items():
        for mount in mounts:
            path = mount["mountPath"]
            if mount["mountPath"] != "/tmp" and (value == path or value.startswith(path + "/")):
                local = scratch / mount["name"] / value[len(path) :].lstrip("/")
                local.mkdir(parents=True, exist_ok=True)
                mapped[name] = str(local)
                break
    return mapped


def _local_run(
    rendered: Rendered,
    kind: str,
    workload: str,
    container_name: str,
    local: dict[str, str],
    scratch: Path,
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    container = rendered.container(kind, workload, container_name)
    env = container_env(rendered, container)
    env = _map_service_urls(env, rendered, local)
    env = _map_volumes(env, container, scratch)
    argv = container_argv(container, env)
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(home), "LANG": "C.UTF-8"}
    full_env = {**base, **env}
    executable = shutil.which(argv[0], path=full_env["PATH"])
    assert executable, argv[0]
    assert Path(executable).parent == VENV_BIN, f"{argv[0]}: {executable}"
    return container, argv, full_env


def _probe_url(container: dict[str, Any], probe: dict[str, Any]) -> str:
    get = probe["httpGet"]
    return f"http://127.0.0.1:{container_port(container, get['port'])}{get['path']}"


def _wait_200(process: Process, url: str, timeout: float) -> httpx.Response:
    last: list[httpx.Response] = []

    def ok() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"{process.name} exited:\n{process.output()[-3000:]}")
        try:
            last[:] = [httpx.get(url, timeout=5)]
        except httpx.HTTPError:
            return False
        return last[0].status_code == 200

    try:
        wait_until(ok, timeout, interval=0.2, what=url)
    except TimeoutError as exc:
        answer = f"{last[0].status_code} {last[0].text[:300]}" if last else "no answer"
        raise AssertionError(f"{url}: {answer}\n{process.output()[-3000:]}") from exc
    return last[0]


@pytest.fixture
def contract_render() -> Rendered:
    """The chart with the replay upstream in, on free ports (so the processes below bind
    exactly the ports the containers declare without colliding with anything here)."""
    return render(
        values={
            "replayUpstream.enabled": True,
            "api.port": free_port(),
            "statsFetcher.port": free_port(),
        }
    )


@pytest.fixture
def contract_processes(tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def test_rendered_containers_run_here_and_answer_on_their_probes(
    contract_render: Rendered,
    redis_url: str,
    database_url: str,
    upstream: Upstream,
    tmp_path: Path,
    contract_processes: list[Process],
) -> None:
    rendered = contract_render
    local = {
        "redis": redis_url,
        "postgresql": database_url,
        "replay-upstream": upstream.url + "/",
    }
    fetcher_name = f"{RELEASE}-stats-fetcher"

    # The init container (and the hook Job: same command) migrates, and exits 0.
    _, argv, env = _local_run(
        rendered, "Deployment", fetcher_name, "migrate", local, tmp_path / "migrate"
    )
    migrate = run([*argv], env=env, timeout=120)
    assert migrate.returncode == 0

    container, argv, env = _local_run(
        rendered, "Deployment", fetcher_name, "stats-fetcher", local, tmp_path / "fetcher"
    )
    assert env["UPSTREAM_BASE_URL"] == upstream.url + "/"
    fetcher = spawn("contract-fetcher", argv, env, tmp_path)
    contract_processes.append(fetcher)
    fetcher_probes = probes(container)
    _wait_200(fetcher, _probe_url(container, fetcher_probes["startup"]), timeout=30)
    for kind in ("liveness", "readiness"):
        _wait_200(fetcher, _probe_url(container, fetcher_probes[kind]), timeout=30)
    api_name = f"{RELEASE}-api"
    container, argv, env = _local_run(
        rendered, "Deployment", api_name, "api", local, tmp_path / "api"
    )
    api = spawn("contract-api", argv, env, tmp_path)
    contract_processes.append(api)
    api_probes = probes(container)
    _wait_200(api, _probe_url(container, api_probes["startup"]), timeout=60)
    _wait_200(api, _probe_url(container, api_probes["liveness"]), timeout=10)
    # Ready once the fetcher (the leader, refreshing at start) has published.
    _wait_200(api, _probe_url(container, api_probes["readiness"]), timeout=120)
    # The Service's target is that port, and it serves the upstream's data.
    (service_port,) = rendered.get("Service", api_name)["spec"]["ports"]
    port = container_port(container, service_port["targetPort"])
    answer = httpx.get(f"http://127.0.0.1:{port}/v1/us/current.json", timeout=10)
    assert answer.status_code == 200
    assert answer.content == upstream.get("/v1/us/current.json").content

    # What the chart tells Prometheus to scrape is there, in Prometheus' text format (the
    # fetcher always; the api once api.metrics.enabled says it serves /metrics).
    scraped = []
    for name, process in ((fetcher_name, fetcher), (api_name, api)):
        annotations = _annotations(rendered, name)
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        target = f"{annotations['prometheus.io/port']}{annotations['prometheus.io/path']}"
        metrics = _wait_200(process, f"http://127.0.0.1:{target}", timeout=10)
        assert list(text_string_to_metric_families(metrics.text)), name
        scraped.append(name)
    assert fetcher_name in scraped
    if api_name in scraped:  # ... and not on the port the api's Service (an Ingress) exposes
        path = _annotations(rendered, api_name)["prometheus.io/path"]
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 404

    # SIGTERM: both stop cleanly within their termination grace periods.
    for process, name in ((api, api_name), (fetcher, fetcher_name)):
        grace = rendered.pod_spec(rendered.get("Deployment", name))["terminationGracePeriodSeconds"]
        started = time.monotonic()
        code = process.stop(timeout=grace)
        assert code == 0, f"{process.name} exited {code}:\n{process.output()[-3000:]}"
        assert time.monotonic() - started < grace


# -- cluster smoke tests ------------------------------------------------------------------------


def _kube_context() -> str | None:
    """The current context of the kubeconfig (KUBECONFIG or ~/.kube/config), if it names one."""
    paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).is_file() for p in paths.split(os.pathsep) if p):
        return None
    kubernetes = optional_module("kubernetes")
    try:
        _, active = kubernetes.config.list_kube_config_contexts()
    except Exception:  # a kubeconfig without a usable context
        return None
    return str(active["name"]) if active and active.get("context", {}).get("cluster") else None


KUBE_CONTEXT = _kube_context()


@pytest.mark.skipif(
    KUBE_CONTEXT is None,
    reason="no kubeconfig names a cluster (KUBECONFIG or ~/.kube/config): the cluster smoke "
    "tests install the chart into one",
)
@pytest.mark.timeout(1200)
def test_cluster_smoke(tmp_path: Path) -> None:
    """Install the chart (in-chart stores, the replay upstream, no volumes) into a new
    namespace enforcing the restricted Pod Security Standard, wait for the rollouts, call the
    api and the /metrics the chart declares through the API server proxy, run `helm test`,
    then remove everything. The images must be pullable by the cluster: set
    COVID_STATS_IMAGE_REGISTRY (e.g. registry.example/team: global.imageRegistry) and
    COVID_STATS_IMAGE_TAG, or load
    covid-stats-{api,fetcher,replay-upstream}:<appVersion> into it (kind load, skaffold)."""
    kubernetes = optional_module("kubernetes")
    assert KUBE_CONTEXT is not None
    kubernetes.config.load_kube_config(context=KUBE_CONTEXT)
    core = kubernetes.client.CoreV1Api()
    apps = kubernetes.client.AppsV1Api()
    namespace = f"covid-stats-smoke-{uuid.uuid4().hex[:8]}"
    helm: list[str | Path] = [tool("helm"), "--kube-context", KUBE_CONTEXT, "-n", namespace]
    values: dict[str, object] = {
        "replayUpstream.enabled": True,
        "redis.persistence.enabled": False,
        "postgresql.persistence.enabled": False,
    }
    # Our images from COVID_STATS_IMAGE_REGISTRY (the chart's global.imageRegistry), Redis and
    # PostgreSQL from Docker Hub (their own registry, set to it explicitly).
    registry = os.environ.get("COVID_STATS_IMAGE_REGISTRY", "").rstrip("/")
    tag = os.environ.get("COVID_STATS_IMAGE_TAG", "")
    if registry:
        values["global.imageRegistry"] = registry
        values["redis.image.registry"] = "docker.io/library"
        values["postgresql.image.registry"] = "docker.io/library"
    for key in ("api", "statsFetcher", "replayUpstream"):
        if tag:
            values[f"{key}.image.tag"] = tag
    values_path = tmp_path / "smoke-values.json"
    values_path.write_text(json.dumps(nested_values(values)))
    core.create_namespace(
        kubernetes.client.V1Namespace(
            metadata=kubernetes.client.V1ObjectMeta(
                name=namespace,
                labels={"pod-security.kubernetes.io/enforce": "restricted"},
            )
        )
    )
    try:
        run(
            [
                *helm,
                "install",
                RELEASE,
                CHART,
                "--values",
                values_path,
                "--wait",
                "--timeout",
                "10m",
            ],
            timeout=900,
        )
        for name in (f"{RELEASE}-api", f"{RELEASE}-stats-fetcher"):
            deployment = apps.read_namespaced_deployment_status(name, namespace)
            assert deployment.status.ready_replicas == deployment.spec.replicas, name
        for name in (f"{RELEASE}-redis", f"{RELEASE}-postgresql"):
            statefulset = apps.read_namespaced_stateful_set_status(name, namespace)
            assert statefulset.status.ready_replicas == 1, name

        def proxy(service: str, path: str, port: str = "http") -> str:
            response = core.connect_get_namespaced_service_proxy_with_path(
                f"{service}:{port}", namespace, path, _preload_content=False
            )
            assert response.status == 200, (service, path, response.status)
            return str(response.data.decode())

        assert json.loads(proxy(f"{RELEASE}-api", "readyz"))["status"] == "ready"
        assert json.loads(proxy(f"{RELEASE}-api", "v1/us/current.json"))
        chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
        scraped = [(f"{RELEASE}-stats-fetcher", "http")]
        if chart_values["api"]["metrics"]["enabled"]:
            scraped.append((f"{RELEASE}-api-metrics", "metrics"))
        for service, port_name in scraped:
            text = proxy(service, "metrics", port_name)
            assert list(text_string_to_metric_families(text)), service
        run([*helm, "test", RELEASE, "--timeout", "10m"], timeout=900)
    finally:
        run([*helm, "uninstall", RELEASE, "--wait", "--timeout", "5m"], check=False, timeout=600)
        core.delete_namespace(namespace)


def test_render_is_reproducible_with_your_own_secrets() -> None:
    """Same values, same render (no randomness) once every Secret is one of yours: what
    makes deploy/k8s reproducible."""
    values = {
        "postgresql.auth.existingSecret": "pg",
        "redis.auth.existingSecret": "r",
        "statsFetcher.refreshToken.existingSecret": "t",
    }
    first = helm_template(values=values).stdout
    assert first == helm_template(values=values).stdout
    assert "kind: Secret" not in first


# -- TLS to external stores, passwords of any characters ------------------------------------

TLS_VALUES: dict[str, object] = {
    "externalDatabase.caSecret": "pg-ca",
    "externalDatabase.clientCertSecret": "pg-client",
    "externalRedis.caSecret": "redis-ca",
    "externalRedis.clientCertSecret": "redis-client",
}
# The URL query parameters that name a file, by URL scheme.
TLS_FILE_PARAMS = {
    "postgresql": ("sslrootcert", "sslcert", "sslkey"),
    "rediss": ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
}


def test_store_tls_files_are_mounted_where_the_urls_name_them() -> None:
    """With caSecret and clientCertSecret set for both stores, every container whose URL
    names a TLS file has it mounted read-only from the named Secret, at that path; the CA is
    verified (verify-full, ssl_cert_reqs=required); passwords are not in the URLs."""
    rendered = render(values_file("external"), values=TLS_VALUES)
    secrets_used: set[str] = set()
    checked = 0
    for doc in rendered.workloads():
        spec = rendered.pod_spec(doc)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = container_env(rendered, container, secrets=dict.fromkeys(_refs(container), "x"))
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for name in ("DATABASE_URL", "REDIS_URL"):
                if name not in env:
                    continue
                url = urllib.parse.urlsplit(env[name])
                assert url.password is None, f"{container['name']}: a password in {name}"
                query = dict(urllib.parse.parse_qsl(url.query))
                files = [query[p] for p in TLS_FILE_PARAMS[url.scheme] if p in query]
                assert len(files) == 3, (container["name"], name, query)
                assert query.get("sslmode", "verify-full") == "verify-full"
                assert query.get("ssl_cert_reqs", "required") == "required"
                for path in files:
                    folder, _, filename = path.rpartition("/")
                    mount = mounts[folder]
                    assert mount.get("readOnly") is True, path
                    secret = volumes[mount["name"]]["secret"]
                    assert filename in {item["path"] for item in secret["items"]}, path
                    secrets_used.add(secret["secretName"])
                    checked += 1
    assert secrets_used == {v for v in TLS_VALUES.values() if isinstance(v, str)}
    assert checked >= 3 * 5  # api (2 URLs), fetcher (2 URLs + init), migration


def _refs(container: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"externalDatabase.sslmode": "require"}, "needs externalDatabase.sslmode verify-ca"),
        ({"externalRedis.tls": False}, "need externalRedis.tls: true"),
        (
            {"postgresql.enabled": True, "externalDatabase.host": ""},
            "are for your own PostgreSQL",
        ),
    ],
    ids=["weak-sslmode", "redis-without-tls", "in-chart-postgresql"],
)
def test_store_tls_misconfigurations_are_refused(values: dict[str, object], message: str) -> None:
    result = helm_template(values_file("external"), values={**TLS_VALUES, **values}, check=False)
    assert result.returncode != 0
    assert message in result.stderr


# -- exposure: Ingress and Gateway API HTTPRoute ----------------------------------------------


def _api_services(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        s
        for s in rendered.of_kind("Service")
        if s["spec"].get("selector", {}).get(COMPONENT_LABEL) == "api"
        and s["spec"].get("clusterIP") != "None"
    ]


def _api_metrics_port(rendered: Rendered) -> dict[str, Any] | None:
    """The api container's port that API_METRICS_PORT names, if the api serves metrics."""
    number = int(rendered.get("ConfigMap", f"{RELEASE}-api")["data"]["API_METRICS_PORT"])
    pod = rendered.pod_spec(rendered.get("Deployment", f"{RELEASE}-api"))
    (container,) = [c for c in pod["containers"] if c["name"] == "api"]
    ports = [p for p in container["ports"] if p["containerPort"] == number]
    assert len(ports) == (1 if number else 0), container["ports"]
    return ports[0] if ports else None


def _api_service(rendered: Rendered) -> dict[str, Any]:
    """The api's Service for traffic (what an Ingress or HTTPRoute sends to): the one that
    does not target the metrics port."""
    metrics = _api_metrics_port(rendered)
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
    metrics = _api_metrics_port(rendered)
    assert metrics is not None
    config = rendered.get("ConfigMap", f"{RELEASE}-api")["data"]
    assert metrics["containerPort"] != int(config["API_PORT"])
    annotations = _annotations(rendered, f"{RELEASE}-api")
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
    assert _api_metrics_port(off) is None
    assert len(_api_services(off)) == 1
    assert "prometheus.io/scrape" not in _annotations(off, f"{RELEASE}-api")
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
