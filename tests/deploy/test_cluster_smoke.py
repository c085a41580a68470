"""Cluster smoke tests, when a kubeconfig names a cluster (else skipped, saying so)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from deploy_support import (
    CHART,
    RELEASE,
    nested_values,
    optional_module,
    run,
    tool,
)

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
                "15m",  # the migration hook may run for its activeDeadlineSeconds (900 s)
            ],
            timeout=1200,
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
