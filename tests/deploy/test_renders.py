"""What the renders say about the pods: the restricted Pod Security Standard, probes, ports,
rolling updates, checksums that roll pods, credentials, the migration hook, GitOps waves, the
settings the configmaps carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploy_support import (
    COMPONENT_LABEL,
    LIBRARY_ENV,
    LIBRARY_ENV_PREFIX,
    MAIN_CONTAINERS,
    RELEASE,
    VALUE_SETS,
    Rendered,
    container_env,
    fake_secrets,
    helm_template,
    pod_annotations,
    probes,
    render,
    service_settings,
    values_file,
)
from stats_fetcher.config import DEFAULT_UPSTREAM_BASE_URL

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
            container_env(rendered, api, fake_secrets(rendered))[
                "GUNICORN_GRACEFUL_TIMEOUT_SECONDS"
            ]
        )
        assert sleep > 0
        assert spec["terminationGracePeriodSeconds"] > sleep + graceful, value_set
        # Idle connections outlast a load balancer's (60 s: ALB, ingress-nginx), silent new
        # ones stay bounded (a stopping worker drains for at most half of `graceful`).
        env = container_env(rendered, api, fake_secrets(rendered))
        assert int(env["GUNICORN_KEEPALIVE_SECONDS"]) > 60, value_set
        assert 0 < float(env["HTTP_NEW_CONNECTION_TIMEOUT_SECONDS"]) <= 10, value_set
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        fetcher_spec = rendered.pod_spec(rendered.get("Deployment", f"{RELEASE}-stats-fetcher"))
        fetcher_env = container_env(
            rendered, fetcher_spec["containers"][0], secrets=fake_secrets(rendered)
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
            assert len({pod_annotations(rendered, d)[annotation] for d in (api, fetcher)}) == 1


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
        secrets=fake_secrets(rendered),
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
        # ... and post-delete: uninstall removes one a failed migration left (test_day2.py).
        assert account["metadata"]["annotations"]["helm.sh/hook"] == f"{hooks},post-delete"
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


def test_every_setting_is_set_by_the_chart(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """The services' settings classes are their contract: each setting has a value in the
    chart (so a setting another change adds fails here until the chart learns it)."""
    settings = service_settings()
    rendered, _ = renders["default"]
    for service in ("api", "stats-fetcher"):
        deployment, container = MAIN_CONTAINERS[service]
        spec = rendered.container("Deployment", deployment, container)
        optional = {  # set from a Secret when it exists (WEBHOOK_SECRET: with webhook URLs)
            item["name"]
            for item in spec.get("env", [])
            if item.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")
        }
        env = container_env(rendered, spec)
        assert (set(env) | optional) - LIBRARY_ENV[service] == settings[service], service


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


def test_webhooks_render_their_urls_secret_and_egress() -> None:
    """URLs as a value, the secret from your Secret (or one the chart makes of a value),
    the fetcher's egress to the receivers' ports; the settings class accepts what renders."""
    from stats_fetcher.config import Settings

    deployment, container = MAIN_CONTAINERS["stats-fetcher"]
    urls = ["https://hooks.example.com/covid", "http://receiver.example:8080/in"]
    secret = "whsec_" + "QUJD" * 8  # base64 of 24 bytes
    yours = render(
        values={
            "statsFetcher.webhooks.urls": urls,
            "statsFetcher.webhooks.existingSecret": "my-hooks",
            "networkPolicy.egress.enabled": True,
        }
    )
    env = container_env(
        yours,
        yours.container("Deployment", deployment, container),
        {("my-hooks", "webhook-secret"): secret},
    )
    assert env["WEBHOOK_URLS"] == ",".join(urls)
    assert env["WEBHOOK_SECRET"] == secret
    assert yours.maybe("Secret", f"{RELEASE}-webhooks") is None
    settings = Settings.model_validate(
        {k.lower(): v for k, v in env.items() if k.startswith("WEBHOOK_")}
    )
    assert settings.webhook_url_list == tuple(urls)
    egress = yours.get("NetworkPolicy", f"{RELEASE}-stats-fetcher-egress")["spec"]["egress"]
    assert {p["port"] for rule in egress for p in rule.get("ports", [])} >= {443, 8080}

    stores = {  # your own store Secrets: a generated password would roll everything
        "postgresql.auth.existingSecret": "pg",
        "redis.auth.existingSecret": "r",
        "statsFetcher.refreshToken.existingSecret": "t",
    }
    hooks = {**stores, "statsFetcher.webhooks.urls": urls}
    made = render(values={**hooks, "statsFetcher.webhooks.secret": secret})
    assert made.secret_value(f"{RELEASE}-webhooks", "webhook-secret") == secret
    fetcher = made.container("Deployment", deployment, container)
    assert [
        item["valueFrom"]["secretKeyRef"]
        for item in fetcher["env"]
        if item["name"] == "WEBHOOK_SECRET"
    ] == [{"name": f"{RELEASE}-webhooks", "key": "webhook-secret", "optional": False}]
    other = render(values={**hooks, "statsFetcher.webhooks.secret": secret + "QUJD"})
    assert _rolled(made, other) == {f"{RELEASE}-stats-fetcher"}  # only the fetcher reads it

    off = render()
    assert "WEBHOOK_SECRET" not in container_env(
        off, off.container("Deployment", deployment, container)
    )
    assert off.maybe("Secret", f"{RELEASE}-webhooks") is None


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
