"""The lifecycle suite: a release's life in pods, under steady load (`make test-lifecycle`, run
by `.ci/run` after `make test-containers`).

The pods are played with podman as in the containers suite (tests/pods.py says how), against
the devstack's Redis and PostgreSQL as external stores and the replay upstream. There is no
kubelet and no API server: what `helm upgrade`, the Deployment controller, the endpoints
controller and kube-proxy would do is done here, step by step, each in one place:

- the api's Service is :class:`front.Front`, a TCP front forwarding each new connection round
  robin to its endpoints; an established connection keeps its backend. Its endpoints are the
  pods the test adds once their readiness probe passes and removes before stopping them;
- a release is a render of a chart (`helm template`) with one release name; each generation
  of pods is rendered with ports of its own (api.port, api.metrics.port, statsFetcher.port):
  on the host's network two pods cannot share a port, in a cluster each has its own IP;
- `helm upgrade` / `helm rollback`: the target chart's pre-upgrade migration Job's pod (an
  upgrade only: a rollback runs pre-/post-rollback hooks, the chart has none), then, per
  Deployment (the fetcher, then the api: a cluster rolls them at the same time; one after
  the other here, so two cores run at most three of the pods), the rolling update of
  replicas 1, maxSurge 1, maxUnavailable 0: the new pod started beside the old one (its init
  containers first), added to the endpoints when its readiness probe passes; then the old
  one removed from them, its preStop hook run (`podman exec` of the rendered command), and
  SIGTERM with what is left of the rendered grace period (`podman pod stop -t`), as the
  kubelet does;
- Secrets the chart generates (the refresh token) keep their values across upgrades, as the
  chart's `lookup` keeps them in a cluster: a Secret already created is kept, keys a newer
  render adds are added.

Order: install the previous release (PREVIOUS_COMMIT's images and chart, tests/lifecycle/
previous.py), upgrade it to this commit, install a second release of this commit's chart
beside it (then uninstall it), roll the first back to the previous release. The second
release comes while the first runs this commit's chart (what must not mix is this commit's
series, alerts and dashboard, whichever commit the previous release is), so before the
rollback. Load runs through the front from the install to the end.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from deploy_support import (
    CHART,
    COMPONENT_LABEL,
    Rendered,
    dashboard_panels,
    dashboard_queries,
    nested_values,
    run,
    tool,
)
from devstack.load import Load, Outcome
from devstack.procs import free_port, wait_until
from devstack.servers import LocalPostgres, LocalRedis
from front import Front
from pods import (
    Pod,
    Podman,
    Prober,
    config_maps_of,
    for_podman,
    monitor_scrape_configs,
    probers,
    start_prometheus,
)
from previous import Previous, previous_release
from support import ARCHIVE, clean_env, python_module, scratch_dir, spawn, summary

pytestmark = [pytest.mark.lifecycle, pytest.mark.timeout(1500)]

FIRST = "lc-one"  # the release upgraded and rolled back
SECOND = "lc-two"  # the release installed beside it
NAMESPACE = "covid-stats"  # both releases' (one namespace, as the issue's case)
LOAD_PATHS = ["/v1/us/current.json", "/v1/states/current.json", "/covid-stats"]
LOAD_RATE = 100.0  # requests per second, steady, through the front, on kept-alive connections
LOAD_CLIENTS = 8
# And clients that open a new connection for every request (`Connection: close`): kept-alive
# clients only reconnect when a pod closes their connection, so without them a front that
# sent new connections to a pod not ready yet would go unseen.
FRESH_RATE = 20.0
FRESH_CLIENTS = 2
COMPONENTS = ("stats-fetcher", "api")  # the Deployments, in the order they are rolled


# -- the stage: stores, upstream, front, load ----------------------------------------------------


@pytest.fixture(scope="module")
def podman() -> Podman:
    return Podman.for_suite()


@dataclass
class Played:
    """One pod of one generation of a release."""

    component: str
    label: str  # the generation: the image tag
    rendered: Rendered
    pod: Pod
    container: dict[str, Any]  # rendered
    files: list[Path]  # what was played (init pods, the pod)
    probers: dict[str, Prober] = field(default_factory=dict)
    played_at: float = 0.0
    ready_after: float | None = None

    @property
    def port(self) -> int:
        return int(self.container["ports"][0]["containerPort"])


@dataclass
class Release:
    name: str
    label: str
    rendered: Rendered
    pods: dict[str, Played] = field(default_factory=dict)  # by component


@dataclass
class Stage:
    podman: Podman
    folder: Path
    previous: Previous
    redis: LocalRedis
    postgres: LocalPostgres
    upstream: str
    front: Front
    loads: list[Load] = field(default_factory=list)  # kept-alive, fresh connections
    first: Release | None = None  # what runs as the first release now
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # podman secrets' data
    played: list[Played] = field(default_factory=list)  # every pod, for the teardown
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (start, end)

    def values(self, **more: object) -> dict[str, object]:
        """The values of every render: the stores, the upstream, fresh ports."""
        return {
            "externalRedis.host": "127.0.0.1",
            "externalRedis.port": self.redis.port,
            "externalRedis.password": self.redis.password,
            "externalDatabase.host": "127.0.0.1",
            "externalDatabase.port": self.postgres.port,
            "externalDatabase.password": self.postgres.password,
            "statsFetcher.upstream.baseUrl": self.upstream + "/",
            "api.port": free_port(),
            "api.metrics.port": free_port(),
            "statsFetcher.port": free_port(),
            **more,
        }


def _password() -> str:
    return secrets.token_hex(12) + "@:/%?# "


@pytest.fixture(scope="module")
def stage(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    folder = tmp_path_factory.mktemp("lifecycle")
    (folder / "secrets").mkdir()
    source = ["--dataset", str(ARCHIVE)] if ARCHIVE.is_dir() else ["--synthetic"]
    upstream_port = free_port()
    # The repositories of the images this commit's chart runs (a render with placeholder
    # stores): the previous release's build must make each of them with its tag.
    minimal: dict[str, object] = {"externalRedis.host": "x", "externalDatabase.host": "x"}
    minimal |= {"externalDatabase.password": "x", "api.port": 1}
    images = sorted(
        {
            c["image"].rsplit(":", 1)[0]
            for d in _render(CHART, FIRST, minimal, folder).of_kind("Deployment", "Job")
            for c in _containers(d)
        }
    )
    with (
        previous_release(podman, images) as previous,
        scratch_dir("lifecycle-pg") as pg_dir,
        scratch_dir("lifecycle-redis") as redis_dir,
        LocalRedis(Path(redis_dir), password=_password()) as redis_server,
        LocalPostgres(Path(pg_dir), password=_password()) as pg_server,
        Front() as front,
    ):
        upstream = spawn(
            "upstream",
            python_module(
                "replay_upstream",
                *("--host", "127.0.0.1", "--port", str(upstream_port), *source),
            ),
            clean_env(),
            folder,
        )
        url = f"http://127.0.0.1:{upstream_port}"
        upstream.wait_http(f"{url}/v1/status.json")
        stage = Stage(podman, folder, previous, redis_server, pg_server, url, front)
        summary(
            f"lifecycle: previous release {previous.commit[:12]}: images "
            + (
                f"built in {previous.built_in:.0f} s"
                if previous.built_in is not None
                else f"present (:{previous.tag}), reused"
            )
        )
        try:
            yield stage
        finally:
            for load in stage.loads:
                load.stop()
            for played in stage.played:
                for prober in played.probers.values():
                    prober.stop()
                for path in played.files:
                    podman.down(path)
            for name in stage.secrets:
                podman.run("secret", "rm", name, check=False)
            upstream.stop()


# -- renders and pods ----------------------------------------------------------------------------


def _render(
    chart: Path, release: str, values: dict[str, object], folder: Path | None = None
) -> Rendered:
    """`helm template <release> <chart>` with the chart's OWN ci/containers-values.yaml (that
    commit's, for the previous release) and ``values``."""
    argv: list[str | Path] = [
        tool("helm"),
        "template",
        release,
        chart,
        "--values",
        chart / "ci" / "containers-values.yaml",
    ]
    if values:
        assert folder is not None
        path = folder / f"values-{release}-{values['api.port']}.json"
        path.write_text(json.dumps(nested_values(values)))
        argv += ["--values", path]
    return Rendered(run(argv).stdout)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _workload(rendered: Rendered, component: str) -> dict[str, Any]:
    (doc,) = [
        d
        for d in rendered.of_kind("Deployment", "Job")
        if d["spec"]["template"]["metadata"]["labels"][COMPONENT_LABEL] == component
    ]
    return doc


def _release(stage: Stage, name: str, current: bool, **values: object) -> Release:
    """A render of this commit's chart (``current``) or the previous release's, with fresh
    ports; its Secrets made podman secrets (generated ones kept, see the module)."""
    if current:
        chart, label = CHART, "current"
    else:
        chart, label = stage.previous.chart, stage.previous.tag
        values = {
            **values,
            "api.image.tag": stage.previous.tag,
            "statsFetcher.image.tag": stage.previous.tag,
        }
    rendered = _render(chart, name, stage.values(**values), stage.folder)
    if not current:  # every container runs an image of the previous release
        for doc in rendered.of_kind("Deployment", "Job"):
            for container in _containers(doc):
                assert container["image"].endswith(f":{stage.previous.tag}"), container["image"]
    for secret in rendered.of_kind("Secret"):
        secret_name = secret["metadata"]["name"]
        kept = stage.secrets.get(secret_name, {})
        data = {**secret.get("data", {}), **kept}
        if data != kept:
            stage.podman.run("secret", "rm", secret_name, check=False)
            stage.podman.run("secret", "create", secret_name, "-", stdin=json.dumps(data))
            stage.secrets[secret_name] = data
    return Release(name, label, rendered)


def _play(stage: Stage, release: Release, component: str) -> Played:
    """A workload's pod of this generation (named `<workload>-<label>`, as a ReplicaSet names
    its pods after its template), its init containers first (each a pod that must exit 0),
    its probes started."""
    rendered = release.rendered
    doc = copy.deepcopy(_workload(rendered, component))
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-{release.label}"
    spec = rendered.pod_spec(doc)
    config_maps = config_maps_of(rendered, spec)
    *inits, main = for_podman(rendered, doc, stage.folder / "secrets")
    played_at = time.monotonic()
    files = []
    for init in inits:
        path = stage.folder / f"{init['metadata']['name']}.yaml"
        files.append(path)
        (pod,) = stage.podman.play([*config_maps, init], path)
        (container,) = init["spec"]["containers"]
        code = pod.wait(container["name"])
        assert code == 0, (
            f"{pod.name} ({release.label}) exited {code}:\n{pod.logs(container['name'])[-3000:]}"
        )
    path = stage.folder / f"{main['metadata']['name']}.yaml"
    files.append(path)
    (pod,) = stage.podman.play([*config_maps, main], path)
    (container,) = spec["containers"]
    played = Played(component, release.label, rendered, pod, container, files)
    played.played_at = played_at
    stage.played.append(played)
    if doc["kind"] != "Job":
        played.probers = {kind: p.start() for kind, p in probers(container).items()}
    return played


def _migrate(stage: Stage, release: Release) -> float:
    """The release's migration Job, played as its pod, to completion (exit 0). Seconds."""
    played = _play(stage, release, "migrate")
    code = played.pod.wait(played.container["name"])
    logs = played.pod.logs(played.container["name"])
    assert code == 0, f"the {release.label} migration exited {code}:\n{logs[-3000:]}"
    return time.monotonic() - played.played_at


def _wait_ready(played: Played) -> None:
    """Startup within its rendered budget, then readiness, as the kubelet sees them."""
    startup, readiness = played.probers["startup"], played.probers["readiness"]
    wait_until(
        lambda: startup.passed_at() is not None or startup.failed_at() is not None,
        startup.budget() + 5,
        what=f"{played.pod.name}'s startup probe",
    )
    logs = played.pod.logs(played.container["name"])
    assert startup.failed_at() is None, f"{played.pod.name} never started:\n{logs[-3000:]}"
    wait_until(lambda: readiness.passed_at() is not None, 120, what=f"{played.pod.name} ready")
    ready = readiness.passed_at()
    assert ready is not None
    played.ready_after = ready - played.played_at


def _stop(stage: Stage, played: Played) -> float:
    """Stop a pod as the kubelet does on deletion: out of the endpoints first (the api), the
    rendered preStop hook, then SIGTERM with what is left of the grace period, SIGKILL at its
    end. The main container must exit 0 within it. Seconds from removal to stopped."""
    started = time.monotonic()
    if played.port in stage.front.endpoints():  # the first release's api
        stage.front.remove(played.port)
    grace = int(
        played.rendered.pod_spec(_workload(played.rendered, played.component)).get(
            "terminationGracePeriodSeconds", 30
        )
    )
    name = played.pod.container(played.container["name"])
    hook = played.container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    if hook:
        stage.podman.run("exec", name, *hook["command"], timeout=grace + 10)
    left = max(2, math.ceil(grace - (time.monotonic() - started)))  # the kubelet's minimum: 2 s
    stage.podman.run("pod", "stop", "--time", str(left), played.pod.id, timeout=grace + 60)
    stopped = time.monotonic() - started
    for prober in played.probers.values():
        prober.stop()
    (info,) = stage.podman.json("container", "inspect", name)
    logs = played.pod.logs(played.container["name"])
    assert info["State"]["ExitCode"] == 0, (
        f"{name} exited {info['State']['ExitCode']}:\n{logs[-3000:]}"
    )
    assert stopped < grace, f"{name} took {stopped:.1f} s of a {grace} s grace period"
    for path in played.files:
        stage.podman.down(path)
    return stopped


def _install(stage: Stage, release: Release) -> None:
    """`helm install`: the migration (a post-install hook; the fetcher's init container
    migrates too, so it is played first here, as the containers suite does), the fetcher and
    the api, each ready."""
    _migrate(stage, release)
    for component in COMPONENTS:
        played = _play(stage, release, component)
        _wait_ready(played)
        release.pods[component] = played


def _roll(stage: Stage, old: Release, new: Release, *, hook: bool) -> dict[str, float]:
    """`helm upgrade` (``hook``: ``new``'s pre-upgrade migration Job first) or `helm
    rollback` (Helm runs only pre-/post-rollback hooks then, and the chart has none) from
    ``old`` to ``new``: each Deployment rolled (maxSurge 1, maxUnavailable 0). Seconds per
    part."""
    took = {"migration": _migrate(stage, new)} if hook else {}
    for component in COMPONENTS:
        started = time.monotonic()
        played = _play(stage, new, component)
        _wait_ready(played)
        if component == "api":
            stage.front.add(played.port)
        new.pods[component] = played
        _stop(stage, old.pods[component])
        took[component] = time.monotonic() - started
    return took


def _image_revision(stage: Stage, played: Played) -> str:
    """The OCI revision label of the image the pod's main container runs."""
    name = played.pod.container(played.container["name"])
    (info,) = stage.podman.json("container", "inspect", name)
    (image,) = stage.podman.json("image", "inspect", info["Image"])
    return str(image["Labels"]["org.opencontainers.image.revision"])


# -- the load's figures ----------------------------------------------------------------------------


def _outcomes(stage: Stage, step: str) -> list[Outcome]:
    start, end = stage.steps[step]
    assert stage.loads, "the load never started"
    return [o for load in stage.loads for o in load.outcomes() if start <= o.started <= end]


def _settle(stage: Stage) -> None:
    """Requests of every client kind finished after the step's last change."""
    now = time.monotonic()
    for load in stage.loads:
        load.wait_requests(40, 60, since=now)


def _describe(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        key = f"{o.path} {o.status if o.status is not None else o.error}"
        counts[key] = counts.get(key, 0) + 1
    return json.dumps(counts, sort_keys=True)


def _step_summary(stage: Stage, step: str, outcomes: list[Outcome], extra: str) -> None:
    start, end = stage.steps[step]
    failed = [o for o in outcomes if not o.ok]
    summary(
        f"lifecycle: {step} in {end - start:.1f} s: {len(outcomes)} requests through the "
        f"front, {len(failed)} failed; {extra}"
    )


def _ready_figures(release: Release) -> str:
    return ", ".join(
        f"{c} ready {p.ready_after:.1f} s after play"
        for c, p in release.pods.items()
        if p.ready_after is not None
    )


# -- 1. install the previous release ---------------------------------------------------------------


def test_1_install_the_previous_release_and_start_the_load(stage: Stage) -> None:
    """The previous release's migration, fetcher and api pods, from its images and chart,
    ready; the api behind the front serving data; then the steady load starts."""
    started = time.monotonic()
    release = _release(stage, FIRST, current=False)
    _install(stage, release)
    for played in release.pods.values():
        assert _image_revision(stage, played) == stage.previous.commit
    stage.front.add(release.pods["api"].port)
    stage.first = release
    wait_until(
        lambda: httpx.get(f"{stage.front.url}{LOAD_PATHS[0]}", timeout=10).status_code == 200,
        300,
        interval=0.5,
        what="the first snapshot served through the front",
    )
    stage.loads = [
        Load(stage.front.url, LOAD_PATHS, clients=LOAD_CLIENTS, rate=LOAD_RATE),
        Load(
            stage.front.url,
            LOAD_PATHS,
            clients=FRESH_CLIENTS,
            rate=FRESH_RATE,
            headers={"Connection": "close"},
        ),
    ]
    for load in stage.loads:
        load.start()
    for load in stage.loads:
        load.wait_requests(40, 60)
    stage.steps["install"] = (started, time.monotonic())
    outcomes = _outcomes(stage, "install")
    assert [o for o in outcomes if not o.ok] == [], _describe(outcomes)
    _step_summary(stage, "install", outcomes, _ready_figures(release))


def _rolling_step(
    stage: Stage, step: str, old: Release, *, current: bool
) -> tuple[Release, list[Outcome], str]:
    """`helm upgrade` (to this commit, ``current``: its pre-upgrade migration Job first) or
    `helm rollback` (to the previous release: no hook) of the first release, as a rolling
    update under the steady load: not one request fails, and afterwards the front's only
    endpoint is the new api pod. The new release, the step's outcomes and its roll times."""
    started = time.monotonic()
    new = _release(stage, FIRST, current=current)
    took = _roll(stage, old, new, hook=current)
    stage.first = new
    _settle(stage)
    stage.steps[step] = (started, time.monotonic())
    outcomes = _outcomes(stage, step)
    failed = [o for o in outcomes if not o.ok]
    assert failed == [], _describe(failed)
    assert stage.front.endpoints() == [new.pods["api"].port]
    return new, outcomes, ", ".join(f"{k} {v:.1f} s" for k, v in took.items())


# -- 2. upgrade to this commit ---------------------------------------------------------------------


def test_2_upgrade_to_this_commit_fails_no_request(stage: Stage) -> None:
    """`helm upgrade` to this commit as a rolling update under the steady load: not one
    request fails; afterwards every answer comes from the new api pod through the front."""
    old = stage.first
    assert old is not None, "the install did not complete"
    assert stage.loads, "the install did not complete"
    new, outcomes, took = _rolling_step(stage, "upgrade", old, current=True)
    assert stage.front.connections[new.pods["api"].port] > 0
    _step_summary(stage, "upgrade", outcomes, f"{_ready_figures(new)}; {took}")


# -- 3. a second release beside the first ---------------------------------------------------------


def _metric_names(url: str) -> set[str]:
    answer = httpx.get(f"{url}/api/v1/label/__name__/values", timeout=10)
    assert answer.status_code == 200, answer.text
    return set(answer.json()["data"])


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")


def _selectors(expr: str, names: set[str]) -> list[str]:
    """The vector selectors of a PromQL expression whose metric a target exposes (function
    names, keywords and label names are not metric names)."""
    found = []
    # String literals blanked (same length), so nothing in them is taken for a name.
    masked = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + " " * (len(m[0]) - 2) + '"', expr)
    for match in _SELECTOR.finditer(masked):
        if match.group(1) in names:
            start, end = match.span()
            found.append(expr[start:end] if match.group(2) else match.group(1))
    return found


def _queries(rendered: Rendered) -> dict[str, str]:
    """{what: PromQL} of every rule (alerts and records) and dashboard query of a render."""
    (rule,) = rendered.of_kind("PrometheusRule")
    queries = {
        f"rule {r.get('alert') or r.get('record')}": str(r["expr"])
        for group in rule["spec"]["groups"]
        for r in group["rules"]
    }
    dashboard = _dashboard(rendered)
    for key, expr in dashboard_queries(dashboard_panels(dashboard)).items():
        queries[f"panel {key}"] = expr
    return queries


def _dashboard(rendered: Rendered) -> dict[str, Any]:
    (config,) = [
        c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    (text,) = config["data"].values()
    dashboard: dict[str, Any] = json.loads(text)
    return dashboard


def test_3_a_second_release_beside_the_first_does_not_mix_with_it(stage: Stage) -> None:
    """A second release of this commit's chart (other name, own database and Redis keys) on
    the same machine and namespace; one Prometheus scrapes both releases' ServiceMonitors.
    Every vector selector of every rule and dashboard query of each release selects series of
    that release's Services only, and the two dashboards have different uids. Then the second
    release is uninstalled."""
    first = stage.first
    assert first is not None, "the install did not complete"
    assert first.label == "current", "the upgrade did not complete"
    started = time.monotonic()

    async def create_database() -> None:
        connection = await asyncpg.connect(stage.postgres.url)
        try:
            await connection.execute("CREATE DATABASE lc_two")
        finally:
            await connection.close()

    asyncio.run(create_database())
    second = _release(
        stage,
        SECOND,
        current=True,
        **{
            "externalDatabase.database": "lc_two",
            "externalRedis.database": 1,
            "redisKeyPrefix": SECOND,
        },
    )
    prometheus = None
    try:
        _install(stage, second)
        scrapes: list[dict[str, Any]] = []
        services: dict[str, set[str]] = {}
        for release in (first, second):
            configs, _ = monitor_scrape_configs(
                release.rendered,
                NAMESPACE,
                {c: p.container for c, p in release.pods.items()},
                {c: p.pod.name for c, p in release.pods.items()},
            )
            scrapes += configs
            services[release.name] = {
                s["metadata"]["name"] for s in release.rendered.of_kind("Service")
            }
        prometheus, url = start_prometheus(
            stage.folder, {"scrape_configs": scrapes}, "prometheus-releases"
        )

        def up() -> list[str]:
            answer = httpx.get(f"{url}/api/v1/query", params={"query": "up == 1"}, timeout=10)
            return [s["metric"]["service"] for s in answer.json()["data"]["result"]]

        wait_until(lambda: len(up()) == len(scrapes), 60, what="every target of both up")
        # Two scrapes of every target: rates and counters have samples.
        wait_until(
            lambda: "covid_stats_api_build_info" in _metric_names(url), 30, what="api samples"
        )
        names = _metric_names(url)
        mixed: list[str] = []
        checked = 0
        for release in (first, second):
            for what, expr in _queries(release.rendered).items():
                for selector in _selectors(expr, names):
                    query = f"count by (service) ({selector})"
                    answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10)
                    assert answer.status_code == 200, (query, answer.text)
                    seen = {s["metric"].get("service", "") for s in answer.json()["data"]["result"]}
                    checked += 1
                    if seen - services[release.name]:
                        mixed.append(f"{release.name} {what}: {selector} selects {sorted(seen)}")
        uids = {r.name: _dashboard(r.rendered)["uid"] for r in (first, second)}
    finally:
        if prometheus is not None:
            prometheus.stop()
        for played in second.pods.values():
            _stop(stage, played)
        for secret in second.rendered.of_kind("Secret"):
            stage.podman.run("secret", "rm", secret["metadata"]["name"], check=False)
            stage.secrets.pop(secret["metadata"]["name"], None)
        stage.steps["second release"] = (started, time.monotonic())
    outcomes = _outcomes(stage, "second release")
    assert [o for o in outcomes if not o.ok] == [], _describe(outcomes)
    _step_summary(
        stage,
        "second release",
        outcomes,
        f"{_ready_figures(second)}; {checked} selectors of both releases' rules and dashboards "
        f"checked, {len(mixed)} select the other release's series; dashboard uids {uids}",
    )
    assert checked > 0
    assert mixed == [], "\n".join(mixed)
    assert len(set(uids.values())) == 2, f"both dashboards have the uid {uids}"


def _previous_migrations(previous: Previous) -> set[int]:
    """The migration versions the previous release ships (its migrations folder)."""
    folder = previous.root / "libs" / "covid-stats-contract" / "src" / "covid_stats_contract"
    return {
        int(path.name.split("_", 1)[0]) for path in (folder / "migrations").glob("[0-9]*_*.sql")
    }


async def _applied_versions(url: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        return [
            row["version"]
            for row in await connection.fetch("SELECT version FROM schema_migrations")
        ]
    finally:
        await connection.close()


# -- 4. roll back to the previous release ----------------------------------------------------------


def test_4_rollback_to_the_previous_release_on_the_migrated_database_fails_no_request(
    stage: Stage,
) -> None:
    """`helm rollback` to the previous release under the steady load, on the database this
    commit migrated: no migration Job (the chart's is a post-install and pre-upgrade hook;
    a rollback runs pre-/post-rollback hooks only), its fetcher with its `migrate` init
    container (statsFetcher.migrateOnStart: the older code meets the newer database there),
    its api; not one request fails; afterwards the previous images serve."""
    current = stage.first
    assert current is not None, "the install did not complete"
    assert current.label == "current", "the upgrade did not complete"
    assert stage.loads, "the install did not complete"
    # The rollback must cross a migration: the database holds versions the previous
    # release's code does not ship (its own migrations folder says which it knows).
    known = _previous_migrations(stage.previous)
    applied = asyncio.run(_applied_versions(stage.postgres.url))
    newer = sorted(set(applied) - known)
    assert newer, (
        f"the database has no migration newer than {stage.previous.commit}'s ({sorted(known)}): "
        "the rollback would cross none; name an older PREVIOUS_COMMIT (tests/lifecycle/previous.py)"
    )
    previous, outcomes, took = _rolling_step(stage, "rollback", current, current=False)
    for played in previous.pods.values():
        assert _image_revision(stage, played) == stage.previous.commit
    _step_summary(
        stage,
        "rollback",
        outcomes,
        f"{_ready_figures(previous)}; {took}; across the migrations {newer} the previous "
        "release does not know",
    )
    every = [o for load in stage.loads for o in load.outcomes()]
    summary(
        f"lifecycle: in all {len(every)} requests through the front ({LOAD_CLIENTS} kept-alive "
        f"clients at {LOAD_RATE:.0f}/s, {FRESH_CLIENTS} with a new connection per request at "
        f"{FRESH_RATE:.0f}/s), {len([o for o in every if not o.ok])} failed; "
        f"connections per api pod port: {dict(stage.front.connections)}; "
        f"refused by the front: {stage.front.refused}"
    )
