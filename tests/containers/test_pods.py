"""The containers suite: the chart's pods started as rendered, on podman (`make test-containers`,
run by `.ci/run` after `make test`).

The chart is rendered with `helm template` and ci/containers-values.yaml; the rendered Secrets
become podman secrets; `podman kube play` runs the migration Job's pod, then the stats-fetcher
Deployment, then the api Deployment, with the images `make images` built, on this machine's
network, against the devstack's Redis and PostgreSQL (with passwords) and the replay upstream
serving the archive. Everything asserted is read from the render, never restated here: users,
read-only roots, capabilities, memory limits, env, mounts, probes, ports, job labels, rules and
dashboard queries. What podman does not do (Jobs, Services, probes, kind: Secret) is done by
tests/pods.py, which says how.

The tests run in file order on one system (module fixtures): the last ones stop pods.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trustme
import yaml  # type: ignore[import-untyped]

import edge
from covid_stats_contract.keys import RedisKeys
from deploy_support import (
    CHART,
    COMPONENT_LABEL,
    RELEASE,
    Rendered,
    container_argv,
    container_env,
    container_port,
    dashboard_panels,
    dashboard_queries,
    helm_template,
    nested_values,
)
from devstack.load import Load, Outcome
from devstack.procs import free_port, wait_until
from devstack.servers import LocalPostgres, LocalRedis
from devstack.tlsproxy import TlsProxy
from pods import (
    Pod,
    Podman,
    Prober,
    config_maps_of,
    for_podman,
    memory_bytes,
    monitor_scrape_configs,
    probers,
    service_target,
    start_prometheus,
    write_secret_files,
)
from support import (
    ARCHIVE,
    Upstream,
    clean_env,
    metric_samples,
    python_module,
    scratch_dir,
    spawn,
    start_api,
    summary,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

VALUES = CHART / "ci" / "containers-values.yaml"
CA_SECRET = "covid-stats-store-ca"  # the user's Secret with the stores' CA (not rendered)
NAMESPACE = "covid-stats"  # the namespace the render (and so Prometheus' labels) names
LOAD_REQUESTS = 20_000


# -- the system ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman() -> Podman:
    return Podman.for_suite()


@dataclass
class System:
    """The played pods and what they were played from."""

    podman: Podman
    rendered: Rendered
    folder: Path
    redis: LocalRedis
    postgres: LocalPostgres
    upstream: Upstream
    tls: tuple[TlsProxy, TlsProxy]  # Redis's, PostgreSQL's
    pods: dict[str, Pod] = field(default_factory=dict)  # by component
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)  # rendered, by component
    probers: dict[tuple[str, str], Prober] = field(default_factory=dict)
    ready_after: dict[str, float] = field(default_factory=dict)  # seconds from play to ready
    migration_exit: int | None = None
    init_exits: dict[str, int] = field(default_factory=dict)  # by pod
    stopped: dict[str, float] = field(default_factory=dict)  # pods stopped on purpose, when

    def workload(self, component: str) -> dict[str, Any]:
        (doc,) = [
            d
            for d in self.rendered.of_kind("Deployment", "Job")
            if d["spec"]["template"]["metadata"]["labels"][COMPONENT_LABEL] == component
        ]
        return doc

    def url(self, component: str) -> str:
        container = self.containers[component]
        return f"http://127.0.0.1:{container['ports'][0]['containerPort']}"

    def env(self, component: str) -> dict[str, str]:
        return container_env(self.rendered, self.containers[component])

    def keys(self) -> RedisKeys:
        return RedisKeys(self.env("api")["REDIS_KEY_PREFIX"])

    def snapshot(self) -> str | None:
        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            raw = client.get(self.keys().current_snapshot)
        finally:
            client.close()
        return None if raw is None else str(raw)

    def documents(self, snapshot: str) -> list[str]:
        client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            return sorted(str(n) for n in client.smembers(self.keys().snapshot_docs(snapshot)))
        finally:
            client.close()


def _render(folder: Path, **values: object) -> Rendered:
    path = folder / "values.json"
    path.write_text(json.dumps(nested_values(values)))
    return Rendered(helm_template(VALUES, path).stdout)


def _play_workload(system: System, component: str) -> float:
    """Play a rendered workload with its ConfigMaps (its init containers first, each as a pod
    that must exit 0), start its container's probers. Returns when podman was asked to play
    it (time.monotonic())."""
    doc = system.workload(component)
    spec = system.rendered.pod_spec(doc)
    config_maps = config_maps_of(system.rendered, spec)
    *inits, main = for_podman(system.rendered, doc, system.folder / "secrets")
    started = time.monotonic()
    for init in inits:
        (pod,) = system.podman.play(
            [*config_maps, init], system.folder / f"{init['metadata']['name']}.yaml"
        )
        (container,) = init["spec"]["containers"]
        code = pod.wait(container["name"])
        assert code == 0, f"{pod.name} exited {code}:\n{pod.logs(container['name'])[-3000:]}"
        system.init_exits[pod.name] = code
    (pod,) = system.podman.play([*config_maps, main], system.folder / f"{component}.yaml")
    system.pods[component] = pod
    (container,) = spec["containers"]
    system.containers[component] = container
    if doc["kind"] != "Job":
        for kind, prober in probers(container).items():
            system.probers[(component, kind)] = prober.start()
    return started


def _wait_ready(system: System, component: str, started: float) -> None:
    """Startup within the rendered startup budget, then readiness, as the kubelet sees them."""
    startup = system.probers[(component, "startup")]
    deadline = startup.budget() + 5
    wait_until(
        lambda: startup.passed_at() is not None or startup.failed_at() is not None,
        deadline,
        what=f"{component}'s startup probe",
    )
    pod = system.pods[component]
    name = system.containers[component]["name"]
    assert startup.failed_at() is None, f"{component} never started:\n{pod.logs(name)[-3000:]}"
    readiness = system.probers[(component, "readiness")]
    wait_until(
        lambda: readiness.passed_at() is not None,
        120,
        what=f"{component}'s readiness probe",
    )
    ready = readiness.passed_at()
    assert ready is not None
    system.ready_after[component] = ready - started


@pytest.fixture(scope="module")
def system(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The stores are reached as managed ones would be: through TLS endpoints whose
    certificates a private CA signed, verified (verify-full, ssl_cert_reqs=required) with that
    CA from the chart's caSecret, with passwords of reserved characters."""
    folder = tmp_path_factory.mktemp("containers")
    source = ["--dataset", str(ARCHIVE)] if ARCHIVE.is_dir() else ["--synthetic"]
    upstream_port = free_port()
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    write_secret_files(folder / "secrets", CA_SECRET, {"ca.crt": ca.cert_pem.bytes()})
    with (
        scratch_dir("containers-pg") as pg_dir,
        scratch_dir("containers-redis") as redis_dir,
        LocalRedis(Path(redis_dir), password=_password()) as redis_server,
        LocalPostgres(Path(pg_dir), password=_password()) as pg_server,
        TlsProxy(redis_server.port, context, "redis") as redis_tls,
        TlsProxy(pg_server.port, context, "postgres") as pg_tls,
    ):
        upstream_process = spawn(
            "upstream",
            python_module(
                "replay_upstream",
                *("--host", "127.0.0.1", "--port", str(upstream_port), "--control", *source),
            ),
            clean_env(),
            folder,
        )
        upstream = Upstream(f"http://127.0.0.1:{upstream_port}", ARCHIVE.is_dir())
        upstream_process.wait_http(f"{upstream.url}/v1/status.json")
        rendered = _render(
            folder,
            **{
                "externalRedis.host": "127.0.0.1",
                "externalRedis.port": redis_tls.port,
                "externalRedis.password": redis_server.password,
                "externalRedis.tls": True,
                "externalRedis.caSecret": CA_SECRET,
                "externalDatabase.host": "127.0.0.1",
                "externalDatabase.port": pg_tls.port,
                "externalDatabase.password": pg_server.password,
                "externalDatabase.sslmode": "verify-full",
                "externalDatabase.caSecret": CA_SECRET,
                "statsFetcher.upstream.baseUrl": upstream.url + "/",
                "api.port": free_port(),
                "statsFetcher.port": free_port(),
            },
        )
        images = sorted(
            {c["image"] for d in rendered.workloads() for c in _all_containers(rendered, d)}
        )
        missing = [image for image in images if not podman.image_exists(image)]
        assert not missing, f"images missing: {missing}; build them with `make images`"
        secret_names = podman.secrets_from(rendered)
        system = System(
            podman, rendered, folder, redis_server, pg_server, upstream, (redis_tls, pg_tls)
        )
        try:
            # The migration (a post-install hook: the stores exist), then the fetcher (its
            # init container migrates again, idempotently), then the api.
            _play_workload(system, "migrate")
            system.migration_exit = system.pods["migrate"].wait("migrate")
            for component in ("stats-fetcher", "api"):
                started = _play_workload(system, component)
                _wait_ready(system, component, started)
            yield system
        finally:
            for prober in system.probers.values():
                prober.stop()
            for path in folder.glob("*.yaml"):
                podman.down(path)
            for name in secret_names:
                podman.run("secret", "rm", name, check=False)
            upstream_process.stop()


def _password() -> str:
    """A random password with the characters a URL reserves (the devstack servers take
    printable ASCII but `"` and `\\`)."""
    return secrets.token_hex(12) + "@:/%?# "


def _all_containers(rendered: Rendered, doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = rendered.pod_spec(doc)
    return list(spec.get("initContainers", [])) + list(spec["containers"])


# -- a. what each container runs with ---------------------------------------------------------


def _proc_status(podman: Podman, container: str) -> dict[str, str]:
    """/proc/1/status of a running container: what its main process really runs with."""
    text = podman.run("exec", container, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_containers_run_with_what_the_render_asks(system: System) -> None:
    """User and group, read-only root, no capabilities, no privilege escalation, seccomp,
    memory limit, env (Secrets and $(VAR) expanded as the kubelet does) and the mounted
    emptyDirs of every running container, from `podman inspect` and from its main process'
    /proc/1/status, against the rendered pod and container."""
    checked = 0
    for component in ("stats-fetcher", "api"):
        doc = system.workload(component)
        pod_spec = system.rendered.pod_spec(doc)
        pod = system.pods[component]
        for container in pod_spec["containers"]:
            name = pod.container(container["name"])
            (info,) = system.podman.json("container", "inspect", name)
            context = {**pod_spec.get("securityContext", {}), **container["securityContext"]}
            # The chart's promise (its README's Security section), whatever the values say.
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["runAsNonRoot"] is True, name
            host = info["HostConfig"]
            assert info["Config"]["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
            assert host["ReadonlyRootfs"] is context["readOnlyRootFilesystem"]
            assert host["Memory"] == memory_bytes(container["resources"]["limits"]["memory"])
            status = _proc_status(system.podman, name)
            uid, gid = str(context["runAsUser"]), str(context["runAsGroup"])
            assert status["Uid"].split() == [uid] * 4, status["Uid"]
            assert status["Gid"].split() == [gid] * 4, status["Gid"]
            if context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get(
                "add"
            ):
                for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                    assert int(status[caps], 16) == 0, f"{name} {caps}={status[caps]}"
            if context["allowPrivilegeEscalation"] is False:
                assert status["NoNewPrivs"].strip() == "1"
            if context["seccompProfile"]["type"] == "RuntimeDefault":
                assert status["Seccomp"].strip() == "2", "no seccomp filter"
            # The root is read-only for the app's user; the emptyDirs are where it writes.
            denied = system.podman.run("exec", name, "touch", "/probe-write", check=False)
            assert denied.returncode != 0
            mounts = {m["Destination"]: m for m in info["Mounts"]}
            volumes = {v["name"]: v for v in pod_spec["volumes"]}
            for mount in container["volumeMounts"]:
                assert mount["mountPath"] in mounts, mount
                volume = volumes[mount["name"]]
                probe = f"{mount['mountPath']}/.containers-suite-write"
                wrote = system.podman.run("exec", name, "touch", probe, check=False)
                if "emptyDir" in volume:  # where the app writes
                    assert wrote.returncode == 0, f"{name} cannot write {mount['mountPath']}"
                    continue
                # A Secret's files (the stores' CA): readable, read-only.
                assert mount.get("readOnly") is True, mount
                assert mounts[mount["mountPath"]]["RW"] is False, mount
                assert wrote.returncode != 0, f"{name} can write {mount['mountPath']}"
                for item in volume["secret"]["items"]:
                    path = f"{mount['mountPath']}/{item['path']}"
                    system.podman.run("exec", name, "cat", path)
            env = dict(e.split("=", 1) for e in info["Config"]["Env"])
            wanted = system.env(component) if component != "migrate" else {}
            for key, value in wanted.items():
                assert env.get(key) == value, f"{name}: {key}"
            assert container_argv(container, wanted) == [
                *info["Config"]["Entrypoint"],
                *info["Config"]["Cmd"],
            ] or container_argv(container, wanted) == [info["Path"], *info["Args"]]
            checked += 1
    assert checked == 2


# -- b. the migration and the probes ------------------------------------------------------------


def test_the_migration_pod_completes(system: System) -> None:
    logs = system.pods["migrate"].logs("migrate")
    assert system.migration_exit == 0, logs[-3000:]
    summary(f"containers: migration pod exited {system.migration_exit}")


def test_every_rendered_probe_passes(system: System) -> None:
    """Every startup probe passed within its budget (initialDelay + period x failures), every
    readiness probe made its pod ready, and no liveness probe has failed its threshold."""
    for component in ("stats-fetcher", "api"):
        # Every probe the render declares is run, and the chart declares all three.
        declared = {
            k
            for k in ("startup", "liveness", "readiness")
            if f"{k}Probe" in system.containers[component]
        }
        assert {k for c, k in system.probers if c == component} == declared
        assert declared == {"startup", "liveness", "readiness"}, component
        startup = system.probers[(component, "startup")]
        assert startup.passed_at() is not None
        assert system.probers[(component, "readiness")].passed_at() is not None
        liveness = system.probers[(component, "liveness")]
        wait_until(partial(_probed, liveness), liveness.period + 10, what="a liveness probe")
        assert liveness.failed_at() is None
        logs = system.pods[component].logs(system.containers[component]["name"])
        assert liveness.results[-1][1], f"{component}: {liveness.results}\n{logs[-3000:]}"
    summary(
        "containers: from `podman kube play` to ready: "
        + ", ".join(f"{c} {s:.1f} s" for c, s in system.ready_after.items())
    )


# -- c. the api serves the archive as `make run` serves it ------------------------------------


def test_the_api_pod_serves_every_document_as_make_run_does(system: System, tmp_path: Path) -> None:
    """Every document of the published snapshot, from the api pod and from the api as
    `make run` runs it (gunicorn on this machine, same stores): same status, body and
    content headers, byte for byte; and they are the upstream's bytes where it has the file."""
    snapshot = system.snapshot()
    assert snapshot is not None
    names = system.documents(snapshot)
    assert len(names) > 50, names
    pod_env = _on_this_machine(system, "api")
    stores = ("REDIS_URL", "REDIS_PASSWORD", "DATABASE_URL", "DATABASE_PASSWORD")
    env = clean_env(
        **{key: pod_env[key] for key in stores}, REDIS_KEY_PREFIX=pod_env["REDIS_KEY_PREFIX"]
    )
    process, local = start_api(env, tmp_path)
    try:
        with httpx.Client(timeout=10) as client:
            for name in names:
                pod = client.get(f"{system.url('api')}/{name}")
                ours = client.get(f"{local}/{name}")
                assert pod.status_code == ours.status_code == 200, name
                assert pod.content == ours.content, name
                for header in ("content-type", "etag", "content-encoding"):
                    assert pod.headers.get(header) == ours.headers.get(header), (name, header)
            # The page and its assets (package data of the image's api).
            page = client.get(f"{system.url('api')}/")
            assert page.status_code == 200
            assert page.content == client.get(f"{local}/").content
            assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text)
            assert assets
            for asset in assets:
                ours = client.get(f"{local}{asset}")
                assert client.get(f"{system.url('api')}{asset}").content == ours.content
            us = client.get(f"{system.url('api')}/v1/us/current.json").content
            assert us == system.upstream.get("/v1/us/current.json").content
    finally:
        process.stop()
    summary(
        f"containers: the api pod served {len(names)} documents, the page and "
        f"{len(assets)} assets as `make run` does"
    )


def _on_this_machine(system: System, component: str) -> dict[str, str]:
    """The component's rendered env, the paths of its Secret volumes (the stores' CA) in its
    values replaced by where those files are on this machine."""
    env = system.env(component)
    spec = system.rendered.pod_spec(system.workload(component))
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in system.containers[component].get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret:
            here = str(system.folder / "secrets" / secret["secretName"])
            env = {k: v.replace(mount["mountPath"], here) for k, v in env.items()}
    return env


def test_the_api_pod_serves_metrics_on_its_metrics_port_only(system: System) -> None:
    """Item 4 of the chart issue on a running pod: the api Service's port (what an Ingress or
    HTTPRoute sends to) answers the scrape path 404; the port the pod's annotations name
    serves every worker's samples, from the gunicorn master."""
    annotations = system.workload("api")["spec"]["template"]["metadata"]["annotations"]
    path, port = annotations["prometheus.io/path"], annotations["prometheus.io/port"]
    traffic = service_target(  # the api's Service, as the Ingress's backend names it
        system.rendered, f"http://{RELEASE}-api:{_api_service_port(system)}", system.containers
    )
    on_traffic = httpx.get(f"{traffic}{path}", timeout=10)
    assert on_traffic.status_code == 404
    assert on_traffic.json()["error"]["code"] == "not_found"
    scraped = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert scraped.status_code == 200
    samples = metric_samples(scraped.text)
    workers = int(system.env("api")["WEB_CONCURRENCY"])
    pool = sum(
        value
        for (name, labels), value in samples.items()
        if name == "covid_stats_api_redis_pool_connections" and ("state", "max") in labels
    )
    assert pool == workers * int(system.env("api")["REDIS_POOL_SIZE"])  # every worker's


def _api_service_port(system: System) -> int:
    (port,) = system.rendered.get("Service", f"{RELEASE}-api")["spec"]["ports"]
    return int(port["port"])


def test_the_helm_test_pod_passes_against_the_api_pod(system: System) -> None:
    """The rendered `helm test` pod, played as it is but for the Service URL it is given
    (no Service here: the api pod's own address on this machine)."""
    (test_pod,) = system.rendered.of_kind("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = test_pod["spec"]
    (container,) = spec["containers"]
    url = container["args"][-1]
    played = {
        **test_pod,
        "spec": {
            **spec,
            "containers": [
                {
                    **container,
                    "args": [
                        *container["args"][:-1],
                        service_target(system.rendered, url, {"api": system.containers["api"]}),
                    ],
                }
            ],
        },
    }
    (pod,) = system.podman.play(
        for_podman(system.rendered, played, system.folder / "secrets"),
        system.folder / "helm-test.yaml",
    )
    name = pod.container(container["name"])
    code = int(system.podman.run("wait", name, timeout=300).stdout.strip().splitlines()[-1])
    logs = pod.logs(container["name"])
    system.podman.down(system.folder / "helm-test.yaml")
    assert code == 0, logs[-3000:]
    assert "ok:" in logs


def test_the_edge_pod_caches_and_purges_by_surrogate_key(system: System) -> None:
    """The edge's rendered Deployment and VCL played in front of the api pod: a document is a
    MISS then a HIT whose Age grows; a PURGE of a Surrogate-Key key the api serves it with, on
    the purge port, drops it; PURGE on the client port is refused; the exporter serves
    varnishd's counters (tests/containers/edge.py says how and checks)."""
    rendered = edge.render_edge(VALUES, system.folder)
    api = system.containers["api"]
    pod, doc, path = edge.play_edge(system.podman, rendered, {"api": api}, system.folder)
    try:
        edge.prove(pod, doc, system.url("api"))
    finally:
        system.podman.down(path)


def _served(metrics_url: str) -> float:
    """Requests a pod's api counted (its /metrics), the probes' (/healthz, /readyz) left out:
    the kubelet's stand-in and the edge's backend probes ask those."""
    samples = metric_samples(httpx.get(metrics_url, timeout=10).text)
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "covid_stats_api_requests_total"
        and dict(labels).get("route") not in ("/healthz", "/readyz")
    )


def test_the_questions_pod_answers_the_questions_the_edge_sends_it(system: System) -> None:
    """questions.enabled: the chart's questions Deployment played beside the api pod, the edge
    pod in front of both with the rendered VCL. Through the edge a question (a query string)
    is answered by the questions pod and a hot document by the api pod, each pod's own request
    counter says so, and the question's answer is the api pod's own. On the host's network the
    questions pod cannot have the api pod's ports (a kubelet gives each pod an address): it
    gets its own in its played copy of the api's ConfigMap (API_PORT, API_METRICS_PORT)."""
    values = system.folder / "questions-values.json"
    values.write_text(
        json.dumps(
            nested_values(
                {
                    "questions.enabled": True,
                    "questions.replicas": 1,  # podman plays one pod per Deployment
                    "questions.autoscaling.enabled": False,
                    "edgeCache.enabled": True,
                    "edgeCache.port": free_port(),
                    "edgeCache.purgePort": free_port(),
                    "edgeCache.metrics.port": free_port(),
                    "edgeCache.purge.acl": ["127.0.0.1", "::1"],
                    "externalDatabase.maxConnections": 1000,
                }
            )
        )
    )
    rendered = Rendered(helm_template(VALUES, system.folder / "values.json", values).stdout)
    (doc,) = [
        d
        for d in rendered.of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"][COMPONENT_LABEL] == "questions"
    ]
    spec = rendered.pod_spec(doc)
    (main,) = for_podman(rendered, doc, system.folder / "secrets")
    ports = {"http": free_port(), "metrics": free_port()}
    own = {"API_PORT": str(ports["http"]), "API_METRICS_PORT": str(ports["metrics"])}
    config_maps = [  # the api's ConfigMap, played with the questions pod's own ports
        {**config, "data": {**config["data"], **own}} if "API_PORT" in config["data"] else config
        for config in config_maps_of(rendered, spec)
    ]
    (container,) = spec["containers"]
    questions = {
        **container,
        "ports": [{"name": name, "containerPort": port} for name, port in ports.items()],
    }
    path = system.folder / "questions.yaml"
    (pod,) = system.podman.play([*config_maps, main], path)
    edge_path: Path | None = None
    try:
        base = f"http://127.0.0.1:{ports['http']}"
        edge.wait_serving(
            pod,
            lambda: (
                edge.answers(f"{base}/readyz")
                and httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            ),
            "the questions pod's readiness",
        )
        edge_pod, edge_doc, edge_path = edge.play_edge(
            system.podman,
            rendered,
            {"api": system.containers["api"], "questions": questions},
            system.folder,
        )
        front = f"http://127.0.0.1:{edge.rendered_ports(edge_doc)['http']}"
        edge.wait_serving(edge_pod, lambda: edge.answers(f"{front}/healthz"), "the edge")
        metrics = {
            "api": f"http://127.0.0.1:{container_port(system.containers['api'], 'metrics')}"
            "/metrics",
            "questions": f"http://127.0.0.1:{ports['metrics']}/metrics",
        }
        before = {name: _served(url) for name, url in metrics.items()}
        question = "/v1/states/daily.json?states=ca,ny&lastdays=3"
        asked = httpx.get(f"{front}{question}", timeout=30)
        hot = httpx.get(f"{front}/v1/us/current.json", timeout=30)
        assert (asked.status_code, hot.status_code) == (200, 200)
        after = {name: _served(url) for name, url in metrics.items()}
        assert {name: after[name] - before[name] for name in metrics} == {
            "api": 1,
            "questions": 1,
        }
        direct = httpx.get(f"{system.url('api')}{question}", timeout=30)
        assert asked.content == direct.content
        assert len(asked.json()) == 6
    finally:
        if edge_path is not None:
            system.podman.down(edge_path)
        system.podman.down(path)
    summary(
        "containers: questions pod behind the edge: a question answered by it, a hot document"
        " by the api pod (their request counters +1 each)"
    )


# -- 3. Prometheus, the chart's rules and dashboard --------------------------------------------


@dataclass
class Prometheus:
    url: str
    rules: list[dict[str, Any]]
    jobs: dict[str, str]  # by component

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        assert answer.status_code == 200, (expr, answer.text)
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        return self.query("ALERTS")


@pytest.fixture(scope="module")
def prometheus(system: System) -> Iterator[Prometheus]:
    """Debian's Prometheus scraping the pods as prometheus-operator would from the chart's
    ServiceMonitors (job, namespace, service, endpoint, pod labels; the monitors' interval,
    path and port), with the rules of the chart's PrometheusRule. The targets are static (no
    API server to discover them from): the Service's target port in the pod behind it."""
    rendered = system.rendered
    scrape_configs, jobs = monitor_scrape_configs(
        rendered,
        NAMESPACE,
        system.containers,
        {component: pod.name for component, pod in system.pods.items()},
    )
    (rule,) = rendered.of_kind("PrometheusRule")
    groups = rule["spec"]["groups"]
    (system.folder / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    config = {
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(system.folder / "rules.yml")],
        "scrape_configs": scrape_configs,
    }
    process, url = start_prometheus(system.folder, config, "prometheus")
    rules = [r for g in groups for r in g["rules"] if "alert" in r]
    yield Prometheus(url, rules, jobs)
    process.stop()


def _probed(prober: Prober) -> bool:
    return len(prober.results) >= 1


def _target_up(prometheus: Prometheus, job: str) -> bool:
    return [s["value"][1] for s in prometheus.query(f'up{{job="{job}"}}')] == ["1"]


def test_prometheus_scrapes_the_pods_with_the_jobs_the_rules_select(
    system: System, prometheus: Prometheus
) -> None:
    """Both pods are up under the jobs the ServiceMonitors give, which are the jobs every
    `up` selector of the rules names; with everything up and fed, no alert expression returns
    a series and no alert is pending; every dashboard panel has data."""
    assert set(prometheus.jobs) == {"api", "stats-fetcher"}
    for job in prometheus.jobs.values():
        wait_until(partial(_target_up, prometheus, job), 60, what=f"{job} up")
    # Feed every series the dashboard shows: requests, and one rejected upstream payload
    # (a fetch error) before a refresh, then a clean refresh that confirms the data again.
    fetcher_env = system.env("stats-fetcher")
    fmt = fetcher_env["UPSTREAM_FORMAT"]
    system.upstream.fault(f"/v1/us/current.{fmt}", "schema", times=1)
    _refresh(system)
    wait_until(
        lambda: bool(prometheus.query("covid_stats_fetcher_fetch_errors_total")),
        60,
        what="the fetch error to be scraped",
    )
    _refresh(system)
    with Load(
        system.url("api"), ["/v1/us/current.json", "/covid-stats", "/v1/status.json"]
    ) as load:
        load.wait_requests(2000, 60)
    wait_until(
        partial(_data_age_known, prometheus),
        60,
        what="the fetcher's data age to be a number",
    )
    # Rates need two scrapes of the fed counters; every rule is evaluated every second.
    interval = max(_seconds(c["scrape_interval"]) for c in _scrape_configs(system))
    with contextlib.suppress(TimeoutError):  # the assertions below say which ones did not
        wait_until(
            lambda: (
                all(_quiet(prometheus, r) for r in prometheus.rules) and not prometheus.alerts()
            ),
            3 * interval + 30,
            what="every alert expression to return nothing",
        )
    loud = [r["alert"] for r in prometheus.rules if not _quiet(prometheus, r)]
    assert loud == [], loud
    assert prometheus.alerts() == []

    config = system.rendered.get("ConfigMap", f"{RELEASE}-dashboard")
    dashboard = json.loads(config["data"]["covid-stats.json"])

    def empty_panels() -> list[str]:
        return [
            panel["title"]
            for panel in dashboard_panels(dashboard)
            if panel["type"] != "row"
            and not any(prometheus.query(q) for q in dashboard_queries([panel]).values())
        ]

    # An increase() needs two scrapes of its counter: the fetch error's may have had one.
    with contextlib.suppress(TimeoutError):  # the assertion below says which ones did not
        wait_until(lambda: not empty_panels(), 3 * interval + 30, what="every panel's data")
    empty = empty_panels()
    assert empty == [], f"dashboard panels without data: {empty}"
    summary(
        f"containers: Prometheus scraped jobs {sorted(prometheus.jobs.values())}; "
        f"{len(prometheus.rules)} alert expressions quiet with everything up; "
        f"{len(dashboard_panels(dashboard))} dashboard panels, none empty"
    )


def _data_age_known(prometheus: Prometheus) -> bool:
    ages = [float(s["value"][1]) for s in prometheus.query("covid_stats_fetcher_data_age_seconds")]
    return bool(ages) and not any(math.isnan(age) for age in ages)


def _scrape_configs(system: System) -> list[dict[str, Any]]:
    config = yaml.safe_load((system.folder / "prometheus.yml").read_text())
    configs: list[dict[str, Any]] = config["scrape_configs"]
    return configs


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(duration)


def _quiet(prometheus: Prometheus, rule: dict[str, Any]) -> bool:
    return prometheus.query(rule["expr"]) == []


def _refresh(system: System) -> None:
    """POST /refresh to the fetcher pod with the token of the rendered Secret; wait for the
    snapshot it publishes (or confirms)."""
    token = system.env("stats-fetcher")["REFRESH_TOKEN"]
    before = _fetches(system)
    answer = httpx.post(
        f"{system.url('stats-fetcher')}/refresh",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    wait_until(lambda: _fetches(system) >= before + 5, 120, what="a refresh of 5 resources")


def _fetches(system: System) -> float:
    text = httpx.get(f"{system.url('stats-fetcher')}/metrics", timeout=10).text
    return sum(
        v
        for (sample, _), v in metric_samples(text).items()
        if sample == "covid_stats_fetcher_fetches_total"
    )


def test_the_annotation_scrape_config_gives_the_same_jobs(system: System) -> None:
    """deploy/prometheus/scrape-pods.yaml, as it is but for the discovery: a stand-in for
    Kubernetes pod discovery gives each target the __meta_kubernetes_pod_annotation_* labels
    of the rendered pod's annotations (no API server here). The jobs it yields are the
    ServiceMonitors' jobs."""
    from deploy_support import operator_jobs

    (scrape,) = yaml.safe_load((CHART.parents[1] / "prometheus" / "scrape-pods.yaml").read_text())
    assert scrape.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    targets = []
    for component in ("stats-fetcher", "api"):
        doc = system.workload(component)
        meta = doc["spec"]["template"]["metadata"]
        labels = {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": system.pods[component].name,
        }
        for key, value in meta["annotations"].items():
            sanitized = "".join(ch if ch.isalnum() else "_" for ch in key)
            labels[f"__meta_kubernetes_pod_annotation_{sanitized}"] = value
        # The pod's address as discovery gives it: its IP with a declared port.
        port = system.containers[component]["ports"][0]["containerPort"]
        targets.append({"targets": [f"127.0.0.1:{port}"], "labels": labels})
    scrape["static_configs"] = targets
    scrape["scrape_interval"] = "1s"
    config = {"scrape_configs": [scrape]}
    process, url = start_prometheus(system.folder, config, "prometheus-annotations")
    try:
        prometheus = Prometheus(url, [], {})
        wanted = operator_jobs(system.rendered)
        wait_until(
            lambda: (
                {s["metric"]["job"] for s in prometheus.query("up == 1")} == set(wanted.values())
            ),
            60,
            what=f"targets up as {sorted(wanted.values())}",
        )
    finally:
        process.stop()


# -- d. memory under load ---------------------------------------------------------------------


def _memory(podman: Podman, container: str) -> int:
    stats = podman.json("stats", "--no-stream", "--no-reset", "--format", "json", container)
    raw = stats[0]["mem_usage"].split("/")[0].strip()
    return _bytes(raw)


def _bytes(text: str) -> int:
    units = {"kB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(float(text.rstrip("B")))


def test_the_api_pod_stays_under_its_memory_limit_under_load(system: System) -> None:
    """At least 20,000 requests over the hot documents and uncached queries: none fails, and
    the api container's memory (podman stats, sampled throughout) stays under its limit."""
    container = system.pods["api"].container(system.containers["api"]["name"])
    limit = memory_bytes(system.containers["api"]["resources"]["limits"]["memory"])
    paths = [
        "/v1/us/current.json",
        "/covid-stats",
        "/v1/states/ca/current.json",
        "/v1/states/current.json",
        "/v1/states/daily.json?state=ny&lastdays=7",
    ]
    peak = 0
    stop = threading.Event()

    def sample() -> None:  # podman stats costs a process: twice a second is enough
        nonlocal peak
        while not stop.wait(0.5):
            peak = max(peak, _memory(system.podman, container))

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    with Load(system.url("api"), paths, clients=16) as load:
        sampler.start()
        load.wait_requests(LOAD_REQUESTS, 300)
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join(timeout=30)
    outcomes = load.outcomes()
    failed = [o for o in outcomes if not o.ok]
    assert len(outcomes) >= LOAD_REQUESTS
    assert failed == [], _describe(failed)
    assert 0 < peak < limit
    summary(
        f"containers: {len(outcomes)} requests to the api pod in {elapsed:.1f} s, "
        f"{len(failed)} failed; peak memory {peak / 2**20:.1f} MiB of a "
        f"{limit / 2**20:.0f} MiB limit (podman stats)"
    )


def _describe(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        key = f"{o.path} {o.status if o.status is not None else o.error}"
        counts[key] = counts.get(key, 0) + 1
    return json.dumps(counts, sort_keys=True)


# -- e. stops -----------------------------------------------------------------------------------


def _upstream_gets(system: System, path: str) -> int:
    return int(system.upstream.requests().get(path, {}).get("total", 0))


def _whole(system: System, snapshot: str) -> bool:
    client = redis.Redis.from_url(system.redis.url, decode_responses=True)
    keys = system.keys()
    try:
        names = client.smembers(keys.snapshot_docs(snapshot))
        return bool(names) and all(client.exists(keys.document(snapshot, str(n))) for n in names)
    finally:
        client.close()


def _returns_job(prometheus: Prometheus, expr: str, job: str) -> bool:
    return any(s["metric"].get("job") == job for s in prometheus.query(expr))


def _pending(prometheus: Prometheus, alert: str, job: str) -> bool:
    return bool(prometheus.query(f'ALERTS{{alertname="{alert}",job="{job}"}}'))


def _down_alert_fires(prometheus: Prometheus, component: str) -> list[str]:
    """The target alerts whose expressions return the component's job once its pod is gone
    (each then pending: its `for:` is longer than this test waits)."""
    job = prometheus.jobs[component]
    down = [r for r in prometheus.rules if "up{" in r["expr"] and "absent(" not in r["expr"]]
    assert down
    for rule in down:
        wait_until(
            partial(_returns_job, prometheus, rule["expr"], job),
            60,
            what=f"{rule['alert']} to return {job}",
        )
        wait_until(
            partial(_pending, prometheus, rule["alert"], job), 30, what=f"{rule['alert']} pending"
        )
    return [r["alert"] for r in down]


def test_the_fetcher_killed_mid_refresh_leaves_the_previous_snapshot_served(
    system: System, prometheus: Prometheus
) -> None:
    """SIGKILL the fetcher's container while a refresh waits on the upstream: the snapshot
    stays current and whole, the api pod keeps serving its bytes; Prometheus then sees the
    fetcher's job down and the fetcher-down alerts' expressions return it."""
    published = system.snapshot()
    assert published is not None
    before = httpx.get(f"{system.url('api')}/v1/us/current.json").content
    fmt = system.env("stats-fetcher")["UPSTREAM_FORMAT"]
    delayed = f"/v1/states/daily.{fmt}"
    asked = _upstream_gets(system, delayed)
    system.upstream.fault(delayed, "delay", seconds=60, times=1)
    token = system.env("stats-fetcher")["REFRESH_TOKEN"]
    answer = httpx.post(
        f"{system.url('stats-fetcher')}/refresh", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 202
    wait_until(
        lambda: _upstream_gets(system, delayed) > asked,
        60,
        what="the refresh to wait on the upstream",
    )
    container = system.pods["stats-fetcher"].container(system.containers["stats-fetcher"]["name"])
    with Load(system.url("api"), ["/v1/us/current.json", "/v1/states/current.json"]) as load:
        load.wait_requests(200, 60)
        system.podman.run("kill", "--signal", "KILL", container)
        killed = time.monotonic()
        system.stopped["stats-fetcher"] = killed
        load.wait_requests(1000, 60, since=killed)
    outcomes = load.outcomes()
    failed = [o for o in outcomes if not o.ok]
    assert failed == [], _describe(failed)
    assert system.snapshot() == published
    assert _whole(system, published)
    assert httpx.get(f"{system.url('api')}/v1/us/current.json").content == before
    alerts = _down_alert_fires(prometheus, "stats-fetcher")
    summary(
        f"containers: fetcher SIGKILLed mid-refresh: snapshot {published} stayed current and "
        f"whole, {len(outcomes)} api requests meanwhile, {len(failed)} failed; "
        f"{', '.join(alerts)} returned {prometheus.jobs['stats-fetcher']}"
    )


def test_stopping_the_api_pod_under_load_fails_no_request_on_an_open_connection(
    system: System, prometheus: Prometheus
) -> None:
    """`podman pod stop` with the rendered grace period (SIGTERM, then SIGKILL at the end of
    it) while 16 keep-alive clients load the api pod: every request on a connection
    established before the stop gets its complete answer; the pod stops within the grace
    period; Prometheus sees the api's job down and the api-down alerts' expressions return it."""
    pod = system.pods["api"]
    grace = system.rendered.pod_spec(system.workload("api"))["terminationGracePeriodSeconds"]
    with Load(system.url("api"), ["/v1/us/current.json", "/v1/states/current.json"]) as load:
        load.wait_requests(1000, 60)
        signalled = time.monotonic()
        system.stopped["api"] = signalled
        system.podman.run("pod", "stop", "--time", str(grace), pod.id, timeout=grace + 60)
        stopped = time.monotonic()
        load.wait_requests(20, 30, since=stopped)
    outcomes = load.outcomes()
    before = [o for o in outcomes if o.connected < signalled]  # nan compares False
    failed = [o for o in before if not o.ok]
    assert failed == [], _describe(failed)
    assert stopped - signalled < grace
    (info,) = system.podman.json(
        "container", "inspect", pod.container(system.containers["api"]["name"])
    )
    assert info["State"]["ExitCode"] == 0, pod.logs(system.containers["api"]["name"])[-3000:]
    alerts = _down_alert_fires(prometheus, "api")
    summary(
        f"containers: api pod stopped under load (grace {grace} s): {len(before)} requests on "
        f"connections open before the stop, {len(failed)} failed; stopped in "
        f"{stopped - signalled:.2f} s, exit code 0; {', '.join(alerts)} returned "
        f"{prometheus.jobs['api']}"
    )


def test_the_stores_were_reached_through_tls_only(system: System) -> None:
    redis_tls, pg_tls = system.tls
    assert redis_tls.sessions >= 3  # the fetcher, two api workers
    assert pg_tls.sessions >= 4  # the migration, the fetcher's init and main, the api
    assert pg_tls.refused == 0


def test_a_wrong_ca_is_refused_with_a_clear_log_line_and_readiness_false(system: System) -> None:
    """The api pod played again (after its stop) with another CA in the stores' CA Secret:
    it starts (liveness asks nothing of the stores) but never becomes ready, and its log says
    the stores' certificates failed verification."""
    assert "api" in system.stopped
    wrong = system.folder / "secrets-wrong-ca"
    write_secret_files(wrong, CA_SECRET, {"ca.crt": trustme.CA().cert_pem.bytes()})
    doc = system.workload("api")
    spec = system.rendered.pod_spec(doc)
    (main,) = for_podman(system.rendered, doc, wrong)
    path = system.folder / "api-wrong-ca.yaml"
    (pod,) = system.podman.play([*config_maps_of(system.rendered, spec), main], path)
    container = system.containers["api"]
    found = probers(container)
    for prober in found.values():
        prober.start()
    try:
        readiness = found["readiness"]
        budget = found["startup"].budget() + readiness.period * (readiness.failure_threshold + 2)
        wait_until(lambda: readiness.failed_at() is not None, budget, what="readiness to fail")
        assert found["startup"].passed_at() is not None
        assert readiness.passed_at() is None
        logs = pod.logs(container["name"])
    finally:
        for prober in found.values():
            prober.stop()
        system.podman.down(path)
    assert "certificate verify failed" in logs, logs[-3000:]
    first = next(text for text in logs.splitlines() if "certificate verify failed" in text)
    summary(f"containers: a wrong CA: readiness false, first log line saying so: {first[:300]}")


def test_no_liveness_probe_failed_while_the_pods_ran(system: System) -> None:
    """Over the whole suite (the load included), no liveness probe reached its failure
    threshold before its pod was stopped on purpose: the kubelet would have restarted
    nothing; and each was probed more than once."""
    for (component, kind), prober in system.probers.items():
        if kind != "liveness":
            continue
        prober.stop()
        until = system.stopped.get(component, math.inf)
        assert prober.failed_at(until=until) is None, (component, prober.results)
        assert len([at for at, _ in prober.results if at < until]) >= 2, component
