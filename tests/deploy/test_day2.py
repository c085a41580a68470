"""Day 2 on a cluster, as the renders say it: drains that finish (PodDisruptionBudgets that let
unhealthy pods go, topology spread that skips cordoned and tainted nodes), DNS that works with
node-local caches, stores that chart-only releases leave alone, claim templates, per-release
names, and the smaller knobs (pull secrets, HPA behaviour, fetcher ingress, grace periods).

Kubernetes itself does not run here: each test checks the rendered field that the documented
Kubernetes behaviour acts on.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    RELEASE,
    VALUE_SETS,
    Rendered,
    operator_jobs,
    render,
    run,
    set_args,
    tool,
    values_file,
)

# -- drains --------------------------------------------------------------------------------------


def test_every_pdb_lets_unhealthy_pods_be_evicted(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """With the default policy (IfHealthyBudget) a NotReady pod (every fetcher while a store is
    away) counts against the budget and can never be evicted: a drain waits for ever.
    AlwaysAllow lets the eviction API take pods that are not ready anyway."""
    seen = 0
    for value_set, (rendered, _) in renders.items():
        for pdb in rendered.of_kind("PodDisruptionBudget"):
            seen += 1
            where = f"{value_set}: {pdb['metadata']['name']}"
            assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", where
    assert seen >= len(VALUE_SETS), seen


def _spread_constraints(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [
        (doc["metadata"]["name"], constraint)
        for doc in rendered.workloads()
        for constraint in rendered.pod_spec(doc).get("topologySpreadConstraints", [])
    ]


def test_topology_spread_honours_taints_and_node_affinity(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    """nodeTaintsPolicy Honor: a cordoned node (taint node.kubernetes.io/unschedulable) or a
    tainted one the pod does not tolerate is no domain, so DoNotSchedule does not wait for a
    pod to land on it while a drain evicts (Ignore, Kubernetes' default, counts it as an empty
    domain). The ha set spreads hard (DoNotSchedule): it must honour them too."""
    hard = seen = 0
    for value_set, (rendered, _) in renders.items():
        for name, constraint in _spread_constraints(rendered):
            where = f"{value_set}: {name}"
            assert constraint.get("nodeTaintsPolicy") == "Honor", where
            assert constraint.get("nodeAffinityPolicy") == "Honor", where
            hard += constraint["whenUnsatisfiable"] == "DoNotSchedule"
            seen += 1
    assert seen, "no topologySpreadConstraints rendered"
    assert hard, "the ha set spreads api and fetcher with DoNotSchedule"


def test_topology_spread_policies_are_values() -> None:
    rendered = render(
        values=dict.fromkeys(
            ["api.topologySpread.nodeTaintsPolicy", "statsFetcher.topologySpread.nodeTaintsPolicy"],
            "Ignore",
        )
        | {"api.topologySpread.nodeAffinityPolicy": "Ignore"}
    )
    by_name: dict[str, list[dict[str, Any]]] = {}
    for name, constraint in _spread_constraints(rendered):
        by_name.setdefault(name, []).append(constraint)
    api = by_name[f"{RELEASE}-api"]
    fetcher = by_name[f"{RELEASE}-stats-fetcher"]
    assert {c["nodeTaintsPolicy"] for c in api + fetcher} == {"Ignore"}
    assert {c["nodeAffinityPolicy"] for c in api} == {"Ignore"}
    assert {c["nodeAffinityPolicy"] for c in fetcher} == {"Honor"}


# -- DNS egress ----------------------------------------------------------------------------------

NODE_LOCAL_DNS = "169.254.20.10/32"


def _dns_rules(rendered: Rendered) -> list[dict[str, Any]]:
    """The egress rules of the release-wide policy that open port 53 (the DNS rule)."""
    rules = []
    for policy in rendered.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            if any(p.get("port") == 53 for p in rule.get("ports", [])):
                rules.append(rule)
    return rules


def test_dns_egress_reaches_any_resolver_by_default() -> None:
    """With egress fenced, the pods' resolver may be a kube-dns pod, a NodeLocal DNSCache on
    169.254.20.10 (a link-local address on the node: no pod or namespace selects it) or
    OpenShift's DNS pods in openshift-dns: the default rule names no peer, so port 53 UDP and
    TCP reach any of them."""
    rendered = render(values={"networkPolicy.egress.enabled": True})
    (rule,) = _dns_rules(rendered)
    assert "to" not in rule, rule
    assert {(p["port"], p["protocol"]) for p in rule["ports"]} == {(53, "UDP"), (53, "TCP")}


def test_dns_egress_restriction_is_opt_in() -> None:
    peers = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        },
        {"ipBlock": {"cidr": NODE_LOCAL_DNS}},
    ]
    rendered = render(
        values={"networkPolicy.egress.enabled": True, "networkPolicy.egress.dns.to": peers}
    )
    (rule,) = _dns_rules(rendered)
    assert rule["to"] == peers


# -- stores untouched by chart-only releases, claim templates -------------------------------------

STORES = ("redis", "postgresql")
# Credentials of your own: generated ones differ at every render (and their checksums with them).
OWN_SECRETS = {
    "redis.auth.existingSecret": "covid-stats-redis-credentials",
    "postgresql.auth.existingSecret": "covid-stats-postgresql-credentials",
}


def _bumped_chart(folder: Path) -> Path:
    """A copy of the chart whose Chart.yaml names a newer version and appVersion."""
    chart = folder / "covid-stats"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = f"{meta['version']}-next.1"
    meta["appVersion"] = f"{meta['appVersion']}-next.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def _store_templates(text: str) -> dict[str, Any]:
    rendered = Rendered(text)
    return {
        doc["metadata"]["name"]: doc["spec"]["template"] for doc in rendered.of_kind("StatefulSet")
    }


def test_a_chart_only_release_leaves_the_store_pod_templates_alone(tmp_path: Path) -> None:
    """A StatefulSet rolls its pod when its pod template changes: a new chart version (and
    appVersion: new api and fetcher images) must not change the Redis or PostgreSQL template,
    or every release restarts the single-replica stores. Two chart versions, same values."""
    bumped = _bumped_chart(tmp_path)
    args = set_args(OWN_SECRETS)
    before = _store_templates(run([tool("helm"), "template", RELEASE, CHART, *args]).stdout)
    after = _store_templates(run([tool("helm"), "template", RELEASE, bumped, *args]).stdout)
    assert set(before) == {f"{RELEASE}-{store}" for store in STORES}
    for name, template in before.items():
        assert after[name] == template, name
    # The bump reached the rest of the release (else the comparison proves nothing).
    deployments = Rendered(run([tool("helm"), "template", RELEASE, bumped, *args]).stdout)
    labels = deployments.get("Deployment", f"{RELEASE}-api")["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"].endswith("-next.1")


def _claim_templates(rendered: Rendered, store: str) -> list[dict[str, Any]]:
    claims: list[dict[str, Any]] = rendered.get("StatefulSet", f"{RELEASE}-{store}")["spec"].get(
        "volumeClaimTemplates", []
    )
    return claims


def test_claim_templates_are_whole_objects_retained_by_default() -> None:
    """apiVersion and kind on each claim template (the API server stores them so: without them
    Argo CD's server-side diff stays OutOfSync), and a retention policy: Retain on delete and
    scale-down unless the values say otherwise."""
    rendered = render()
    for store in STORES:
        (claim,) = _claim_templates(rendered, store)
        assert (claim["apiVersion"], claim["kind"]) == ("v1", "PersistentVolumeClaim")
        policy = rendered.get("StatefulSet", f"{RELEASE}-{store}")["spec"][
            "persistentVolumeClaimRetentionPolicy"
        ]
        assert policy == {"whenDeleted": "Retain", "whenScaled": "Retain"}, store
    deleting = render(
        values={
            f"{store}.persistence.retentionPolicy": {
                "whenDeleted": "Delete",
                "whenScaled": "Retain",
            }
            for store in STORES
        }
    )
    for store in STORES:
        spec = deleting.get("StatefulSet", f"{RELEASE}-{store}")["spec"]
        assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"


@pytest.mark.parametrize("store", STORES)
def test_an_existing_claim_replaces_the_claim_template(store: str) -> None:
    rendered = render(values={f"{store}.persistence.existingClaim": f"my-{store}-data"})
    statefulset = rendered.get("StatefulSet", f"{RELEASE}-{store}")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in statefulset["spec"]
    volumes = {v["name"]: v for v in rendered.pod_spec(statefulset)["volumes"]}
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": f"my-{store}-data"},
    }
    (container,) = [c for c in rendered.pod_spec(statefulset)["containers"] if c["name"] == store]
    assert "data" in {m["name"] for m in container["volumeMounts"]}
    # The other store keeps its claim template.
    (other,) = set(STORES) - {store}
    assert _claim_templates(rendered, other)


# -- smaller knobs -------------------------------------------------------------------------------


def test_global_pull_secrets_are_merged_with_the_charts_own() -> None:
    """A parent chart's global.imagePullSecrets reach every pod (the helm test pod too),
    beside the chart's own imagePullSecrets, each name once."""
    rendered = render(
        values={
            "global.imagePullSecrets": ["shared"],
            "imagePullSecrets": [{"name": "own"}, "shared"],
        }
    )
    workloads = rendered.workloads()
    assert {doc["kind"] for doc in workloads} >= {"Deployment", "StatefulSet", "Job", "Pod"}
    for doc in workloads:
        secrets = rendered.pod_spec(doc).get("imagePullSecrets")
        assert secrets == [{"name": "shared"}, {"name": "own"}], doc["metadata"]["name"]


def test_the_hpa_scales_down_slowly_by_default_and_takes_a_behavior() -> None:
    """Scale-down stabilisation of 300 s and at most one pod a minute: a load that comes and goes
    does not remove api pods (whose caches fill anew) only to add them again."""
    hpa = render().get("HorizontalPodAutoscaler", f"{RELEASE}-api")
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert hpa["spec"]["behavior"]["scaleUp"]["policies"]
    tuned = render(values={"api.autoscaling.behavior.scaleDown.stabilizationWindowSeconds": 600})
    behavior = tuned.get("HorizontalPodAutoscaler", f"{RELEASE}-api")["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600


def _fetcher_ingress(rendered: Rendered) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = rendered.get("NetworkPolicy", f"{RELEASE}-stats-fetcher")["spec"][
        "ingress"
    ]
    return rules


def test_the_fetcher_port_is_fenced_by_networkpolicy_fetcher_from() -> None:
    """Default: the fetcher's port from anywhere (as before). networkPolicy.fetcher.from names
    who may call it (POST /refresh); Prometheus, named once in api.metricsFrom, may still
    scrape its /metrics."""
    (rule,) = _fetcher_ingress(render())
    assert "from" not in rule
    callers = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "refresher"}}}]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]
    (rule,) = _fetcher_ingress(
        render(
            values={
                "networkPolicy.fetcher.from": callers,
                "networkPolicy.api.metricsFrom": prometheus,
            }
        )
    )
    assert rule["from"] == callers + prometheus
    assert [p["port"] for p in rule["ports"]] == ["http"]


def test_store_grace_periods_are_values() -> None:
    defaults = render()
    tuned = render(
        values={
            "redis.terminationGracePeriodSeconds": 90,
            "postgresql.terminationGracePeriodSeconds": 120,
        }
    )
    for store, default, value in (("redis", 30, 90), ("postgresql", 60, 120)):
        name = f"{RELEASE}-{store}"
        grace = defaults.pod_spec(defaults.get("StatefulSet", name))
        assert grace["terminationGracePeriodSeconds"] == default
        assert (
            tuned.pod_spec(tuned.get("StatefulSet", name))["terminationGracePeriodSeconds"] == value
        )


# -- discovery -----------------------------------------------------------------------------------


def _notes(values: dict[str, object]) -> str:
    argv: list[str | Path] = [
        tool("helm"),
        "install",
        RELEASE,
        CHART,
        "--dry-run=client",
        *set_args(values),
    ]
    return str(run(argv).stdout.partition("\nNOTES:\n")[2])


def test_notes_say_when_prometheus_operator_objects_carry_no_labels() -> None:
    """kube-prometheus-stack selects ServiceMonitors and PrometheusRules by `release: <its
    release>`: the install notes say so when they are on without labels, and only then."""
    hint = "metrics.serviceMonitor.labels.release="
    assert hint in _notes({"metrics.serviceMonitor.enabled": True})
    assert hint in _notes({"metrics.prometheusRule.enabled": True})
    labelled = {
        "metrics.serviceMonitor.enabled": True,
        "metrics.serviceMonitor.labels": {"release": "kps"},
        "metrics.prometheusRule.enabled": True,
        "metrics.prometheusRule.labels": {"release": "kps"},
    }
    assert hint not in _notes(labelled)
    assert hint not in _notes({})


# -- two releases in one namespace ---------------------------------------------------------------

MONITORING = {
    "metrics.serviceMonitor.enabled": True,
    "metrics.prometheusRule.enabled": True,
    "metrics.grafanaDashboard.enabled": True,
}


def _release(name: str) -> Rendered:
    argv: list[str | Path] = [tool("helm"), "template", name, CHART, "--namespace", "shared"]
    return Rendered(run([*argv, *set_args(MONITORING)]).stdout)


def _rule_jobs(rendered: Rendered) -> set[str]:
    (rule,) = rendered.of_kind("PrometheusRule")
    text = yaml.safe_dump(rule["spec"])
    jobs: set[str] = set()
    for value in re.findall(r'\bjob=~?"([^"]*)"', text):
        jobs.update(value.split("|"))
    return jobs


def test_two_releases_in_one_namespace_keep_their_series_alerts_and_dashboards_apart() -> None:
    """By default each release's targets get jobs of its own (from its fullname), its alert
    rules select only those, and its dashboard has a uid of its own (Grafana keys dashboards
    by uid: the sidecar would otherwise overwrite one with the other)."""
    first, second = _release("shop"), _release("stats")
    jobs = [operator_jobs(rendered) for rendered in (first, second)]
    assert set(jobs[0]) == set(jobs[1]) == {"api", "stats-fetcher"}
    assert not set(jobs[0].values()) & set(jobs[1].values()), jobs
    for rendered, own in zip((first, second), jobs, strict=True):
        selected = _rule_jobs(rendered)
        assert selected, "the rules select jobs"
        assert selected <= set(own.values()), (selected, own)
        # The pods' prometheus.io/job annotation (plain Prometheus) names the same jobs.
        for component, job in own.items():
            deployment = rendered.of_kind("Deployment")
            annotated = {
                d["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/job")
                for d in deployment
            }
            assert job in annotated, (component, job, annotated)
    uids = [_dashboard(r)["uid"] for r in (first, second)]
    assert uids[0] != uids[1]
    assert all(0 < len(uid) <= 40 for uid in uids), uids
    # The release named like the chart keeps the job names it always had.
    assert operator_jobs(render(values=MONITORING)) == {
        "api": f"{RELEASE}-api",
        "stats-fetcher": f"{RELEASE}-fetcher",
    }


# A series selector in PromQL: a metric name, then its matchers if any. Names are the project's
# (covid_stats_*) and any other name written with matchers (up{...}, process_start_time_...{...}).
_SELECTOR = re.compile(r"\b(covid_stats_[a-z_]+|[a-z_:]+(?=\{))(\{[^}]*\})?")
_JOB_MATCHER = re.compile(r'\bjob\s*(=~?)\s*"([^"]*)"')


def _queries(rendered: Rendered) -> list[str]:
    """Every rule expression of the PrometheusRule and every dashboard panel query."""
    (rule,) = rendered.of_kind("PrometheusRule")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    panels = _dashboard(rendered)["panels"]
    exprs += [t["expr"] for panel in panels for t in panel.get("targets", []) if "expr" in t]
    return exprs


def test_every_rule_and_dashboard_selector_names_its_own_release_jobs() -> None:
    """Two releases in one namespace: a selector without a job matcher (a bare
    covid_stats_* name, aggregated by namespace) would add up both releases' series, so
    every series selector of each release's rules and dashboard names that release's jobs
    and no other."""
    for name in ("shop", "stats"):
        rendered = _release(name)
        own = set(operator_jobs(rendered).values())
        checked = 0
        for expr in _queries(rendered):
            for match in _SELECTOR.finditer(expr):
                matchers = match[2] or ""
                job = _JOB_MATCHER.search(matchers)
                assert job, f"{name}: {match[0]!r} in {expr!r} names no job"
                selected = set(job[2].split("|")) if job[1] == "=~" else {job[2]}
                assert selected <= own, f"{name}: {match[0]!r} selects {selected}, not {own}"
                checked += 1
        assert checked > 20, checked


def _dashboard(rendered: Rendered) -> dict[str, Any]:
    (config,) = [
        c for c in rendered.of_kind("ConfigMap") if "covid-stats.json" in c.get("data", {})
    ]
    dashboard: dict[str, Any] = json.loads(config["data"]["covid-stats.json"])
    return dashboard


# -- uninstall -----------------------------------------------------------------------------------


def _hook(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    annotations = doc["metadata"].get("annotations", {})
    return (
        set(annotations.get("helm.sh/hook", "").split(",")) - {""},
        set(annotations.get("helm.sh/hook-delete-policy", "").split(",")) - {""},
    )


@pytest.mark.parametrize("value_set", ["default", "external"])  # post-install, pre-install
def test_no_migration_serviceaccount_outlives_an_uninstall(value_set: str) -> None:
    """Helm deletes no hook on uninstall, and before 3.18 not a hook that succeeded before a
    later one failed (helm/helm#10279): the migration's ServiceAccount stayed after a failed
    migration and an uninstall. As a post-delete hook too, `helm uninstall` deletes the one
    left behind (before-hook-creation), creates it and deletes it (hook-succeeded). No
    cluster here: the test checks the annotations Helm acts on, as its docs define them. The
    Job itself is no post-delete hook (it would migrate on uninstall)."""
    rendered = render(values_file(value_set))
    account = rendered.get("ServiceAccount", f"{RELEASE}-migrate")
    job = rendered.get("Job", f"{RELEASE}-migrate")
    phases, policies = _hook(account)
    job_phases, _ = _hook(job)
    assert "post-delete" in phases
    assert {"before-hook-creation", "hook-succeeded"} <= policies
    assert job_phases <= phases - {"post-delete"}, (job_phases, phases)
    assert "post-delete" not in job_phases
    assert rendered.pod_spec(job)["serviceAccountName"] == account["metadata"]["name"]


# -- a changed claim template, refused where Helm reaches the cluster ----------------------------


def _plural(kind: str) -> str:
    lower = kind.lower()
    return (
        lower[:-1] + "ies"
        if lower.endswith("y")
        else lower + ("es" if lower.endswith("s") else "s")
    )


def _discovery(rendered: Rendered) -> dict[str, Any]:
    """The discovery documents client-go asks for, listing the kinds of ``rendered``."""
    kinds: dict[str, set[str]] = {}
    for doc in rendered.docs:
        kinds.setdefault(doc["apiVersion"], set()).add(doc["kind"])
    documents: dict[str, Any] = {
        "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    }
    groups = []
    for group_version, group_kinds in sorted(kinds.items()):
        resources = [
            {"name": _plural(k), "singularName": k.lower(), "namespaced": True, "kind": k}
            for k in sorted(group_kinds)
        ]
        for resource in resources:
            resource["verbs"] = ["get", "list"]
        if "/" in group_version:
            group, version = group_version.split("/")
            entry = {"groupVersion": group_version, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            path = f"/apis/{group_version}"
        else:
            path = "/api/v1"
        documents[path] = {
            "kind": "APIResourceList",
            "groupVersion": group_version,
            "resources": resources,
        }
    documents["/apis"] = {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    return documents


class _FakeApiServer(http.server.ThreadingHTTPServer):
    """A stand-in for a Kubernetes API server (none runs here): the discovery documents client-go
    asks for (/version, /api, /apis, the resource lists of the kinds the chart renders) and GETs
    of the objects given; 404 for anything else. Enough for Helm's `lookup` under `helm
    template --dry-run=server`, nothing more: no OpenAPI, no watch, no write, no admission."""

    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        super().__init__(("127.0.0.1", 0), _FakeApiHandler)


class _FakeApiHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeApiServer

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        body = self.server.objects.get(path)
        status = 200 if body is not None else 404
        if body is None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """(the objects the fake API server serves, by path; the environment pointing helm at it)."""
    objects: dict[str, Any] = _discovery(render())
    server = _FakeApiServer(objects)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "fake",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "fake", "namespace": "ns"},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    yield objects, {**os.environ, "KUBECONFIG": str(kubeconfig)}
    server.shutdown()
    server.server_close()


def _as_stored(statefulset: dict[str, Any]) -> dict[str, Any]:
    """The StatefulSet as the API server would return it after `helm install`: Helm's ownership
    annotations, defaults filled in its claim template."""
    stored = copy.deepcopy(statefulset)
    stored["metadata"].setdefault("annotations", {}).update(
        {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": "ns"}
    )
    for claim in stored["spec"].get("volumeClaimTemplates", []):
        claim["spec"].setdefault("volumeMode", "Filesystem")
        claim["status"] = {"phase": "Pending"}
    return stored


@pytest.mark.parametrize("store", STORES)
def test_a_changed_claim_template_is_refused_where_helm_reaches_the_cluster(
    store: str, fake_cluster: tuple[dict[str, Any], dict[str, str]]
) -> None:
    """Kubernetes forbids changing a StatefulSet's volumeClaimTemplates, so `helm upgrade` with a
    new size or storage class would fail half-way ("Forbidden: updates to statefulset spec").
    The chart looks the StatefulSet up and refuses first, naming the procedure; the same
    values upgrade, and a first install (nothing to look up) renders. The API server is a fake
    (see _FakeApiServer): Helm's `lookup` is real."""
    objects, env = fake_cluster
    name = f"{RELEASE}-{store}"
    installed = render().get("StatefulSet", name)
    path = f"/apis/apps/v1/namespaces/ns/statefulsets/{name}"

    def template(values: dict[str, object]) -> Any:
        argv: list[str | Path] = [tool("helm"), "template", RELEASE, CHART, "--namespace", "ns"]
        # The fake serves no OpenAPI document to validate against.
        argv += ["--dry-run=server", "--disable-openapi-validation"]
        argv += ["-s", f"templates/{store}/statefulset.yaml"]
        argv += set_args(values)
        return run(argv, check=False, env=env)

    assert template({}).returncode == 0  # nothing installed yet
    objects[path] = _as_stored(installed)
    same = template({})
    assert same.returncode == 0, same.stderr
    changes: list[dict[str, object]] = [
        {f"{store}.persistence.size": "50Gi"},
        {f"{store}.persistence.storageClass": "fast-ssd"},
        {f"{store}.persistence.accessModes": ["ReadWriteOncePod"]},
    ]
    for change in changes:
        refused = template(change)
        assert refused.returncode != 0, change
        assert "--cascade=orphan" in refused.stderr, refused.stderr
        assert f"{store}.persistence" in refused.stderr
    # An existing claim of your own has no claim template to compare.
    assert template({f"{store}.persistence.existingClaim": "mine"}).returncode == 0
