"""Helpers of the containers suite (tests/containers/test_pods.py): podman, playing rendered
manifests, and a kubelet's probes run by hand.

podman stands in for the kubelet: `podman kube play` reads the rendered Deployments, their
ConfigMaps, emptyDirs, resources and security contexts, and secretKeyRef env from podman
secrets. What podman 4.3 does not do, or does otherwise, is done here, each on its own line in
:func:`for_podman` and nowhere else:
- a Job is not a kind it plays: the Job's pod template is played as a Pod;
- a `kind: Secret` in the played file hits podman bug #16269: each rendered Secret becomes a
  podman secret holding the JSON of its `data` map (base64 values), which is how podman
  reads secretKeyRef;
- init containers of a Deployment are restarted by the pod's restart policy and their removal
  races (podman #16343, #18477): each is played first as a pod of its own that must exit 0;
- on the host's network it refuses containerPorts (they would be port mappings): they are left
  out of the played copy, and everything that needs a port reads it from the render;
- it passes `$(VAR)` in env values, command and args on as it is: they are expanded as the
  kubelet expands them;
- it panics on a `secret` volume (a nil pointer in VolumeFromSecret): the Secret's files are
  written to a folder of the test's (:data:`SECRET_FILES`) and mounted from there, read-only
  as rendered, at the rendered path;
- it makes a named volume of each emptyDir, by the volume's name, which two pods with a
  `tmp` volume would share: each is named after its pod;
- it refuses annotation values longer than 63 characters (a label value's limit, wrongly
  applied to annotations), such as the chart's checksum/* annotations: those are left out of
  the played copy (annotations change nothing a container runs with);
- it runs no probes without systemd: :class:`Prober` runs the rendered ones as the kubelet
  would (initial delay, period, timeout, thresholds, named ports);
- no Kubernetes Service exists: a Service's address is its target port on this machine (the
  pods share the host's network).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    COMPONENT_LABEL,
    Rendered,
    container_env,
    container_port,
    expand,
    operator_job,
    selected_service,
)
from devstack.procs import free_port
from support import REPO, Process, spawn

CONTAINERS_CONF = REPO / "deploy" / "containers" / "containers.conf"


class Podman:
    """The podman command line with the repository's containers.conf."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

    @classmethod
    def find(cls) -> tuple[Podman | None, str]:
        """podman, or None and why no container can run here."""
        binary = shutil.which("podman")
        if binary is None:
            return None, "podman is not installed (.ci/install-tools installs it)"
        podman = cls(binary)
        info = podman.run("info", "--format", "json", check=False, timeout=60)
        if info.returncode != 0:
            return None, f"podman cannot run containers here: {info.stderr.strip()[-500:]}"
        return podman, ""

    @classmethod
    def for_suite(cls) -> Podman:
        """podman for a suite of pods: the suite fails in CI where none can run, and is
        skipped, saying why, elsewhere."""
        found, why = cls.find()
        if found is None:
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        return found

    def run(
        self, *args: str, check: bool = True, timeout: float = 180, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            input=stdin,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0

    def secrets_from(self, rendered: Rendered) -> list[str]:
        """Every rendered Secret as a podman secret: the JSON of its data map."""
        names = []
        for secret in rendered.of_kind("Secret"):
            name = secret["metadata"]["name"]
            self.run("secret", "rm", name, check=False)
            self.run("secret", "create", name, "-", stdin=json.dumps(secret.get("data", {})))
            names.append(name)
        return names

    def play(self, docs: Iterable[dict[str, Any]], path: Path) -> list[Pod]:
        """`podman kube play` on the host's network (docs as :func:`for_podman` gives them);
        the pods it started."""
        docs = list(docs)
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.volumes_rm(_volumes(docs))  # an emptyDir starts empty
        out = self.run("kube", "play", "--network", "host", "--replace", str(path)).stdout
        pods = []
        for pod_id in _ids_after(out, "Pod:"):
            info = self.json("pod", "inspect", pod_id)
            info = info[0] if isinstance(info, list) else info
            pods.append(Pod(self, info["Name"], pod_id))
        return pods

    def volumes_rm(self, names: Iterable[str]) -> None:
        for name in names:
            self.run("volume", "rm", "--force", name, check=False)

    def down(self, path: Path) -> None:
        """Stop and remove what a played file started, its emptyDirs' volumes too."""
        self.run("kube", "down", str(path), check=False)
        self.volumes_rm(_volumes(d for d in yaml.safe_load_all(path.read_text()) if d))


def _volumes(docs: Iterable[dict[str, Any]]) -> list[str]:
    return [v["name"] for d in docs if d["kind"] == "Pod" for v in d["spec"].get("volumes", [])]


def _ids_after(output: str, heading: str) -> list[str]:
    """The ids `podman kube play` prints under a heading ("Pod:", "Container:")."""
    ids, taking = [], False
    for line in output.splitlines():
        line = line.strip()
        if line.endswith(":"):
            taking = line == heading
        elif taking and line:
            ids.append(line)
    return ids


@dataclass
class Pod:
    podman: Podman
    name: str
    id: str

    def container(self, name: str) -> str:
        """The podman name of the pod's container named ``name`` in the manifest."""
        wanted = f"{self.name}-{name}"
        names = [c["Name"] for c in self.inspect()["Containers"]]
        assert wanted in names, f"{wanted} not in {names}"
        return wanted

    def inspect(self) -> dict[str, Any]:
        info = self.podman.json("pod", "inspect", self.id)
        return dict(info[0] if isinstance(info, list) else info)

    def wait(self, container: str, timeout: float = 300) -> int:
        """The exit code of a container that runs to completion."""
        out = self.podman.run("wait", self.container(container), timeout=timeout).stdout
        return int(out.strip().splitlines()[-1])

    def logs(self, container: str) -> str:
        result = self.podman.run("logs", self.container(container), check=False)
        return result.stdout + result.stderr


def write_secret_files(folder: Path, name: str, data: Mapping[str, bytes]) -> None:
    """A Secret of the user's (not rendered: e.g. a CA), as the files its volume would show:
    ``folder/<name>/<key>``, readable by the containers' user."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name).chmod(0o755)
    for key, value in data.items():
        (folder / name / key).write_bytes(value)
        (folder / name / key).chmod(0o644)


def for_podman(
    rendered: Rendered, doc: dict[str, Any], secret_files: Path | None = None
) -> list[dict[str, Any]]:
    """The pods to play for a rendered Deployment, Job or Pod, as podman 4.3 can play them on
    the host's network: its init containers' pods (in order), then its own. See the module's
    docstring for why each change is made; nothing else is changed."""
    if doc["kind"] == "Pod":
        name, meta, spec = doc["metadata"]["name"], doc["metadata"], doc["spec"]
    else:  # a Job or a Deployment: the pod its controller would create from the template
        name = doc["metadata"]["name"]
        meta, spec = doc["spec"]["template"].get("metadata", {}), doc["spec"]["template"]["spec"]
    spec = {**spec, "volumes": [_volume(v, secret_files) for v in spec.get("volumes", [])]}
    pods = [
        _pod(
            rendered, f"{name}-init-{init['name']}", meta, {**spec, "restartPolicy": "Never"}, init
        )
        for init in spec.get("initContainers", [])
    ]
    (container,) = spec["containers"]
    return [*pods, _pod(rendered, name, meta, spec, container)]


def _volume(volume: dict[str, Any], secret_files: Path | None) -> dict[str, Any]:
    if "secret" not in volume:
        return volume
    secret = volume["secret"]
    assert secret_files is not None, f"no files for the Secret {secret['secretName']}"
    folder = secret_files / secret["secretName"]
    for item in secret.get("items", []):
        assert item["path"] == item["key"], item  # the files are written by key
        assert (folder / item["key"]).is_file(), f"{folder}/{item['key']}"
    return {"name": volume["name"], "hostPath": {"path": str(folder), "type": "Directory"}}


def _pod(
    rendered: Rendered,
    name: str,
    meta: dict[str, Any],
    spec: dict[str, Any],
    container: dict[str, Any],
) -> dict[str, Any]:
    env = container_env(rendered, container)
    played = {k: v for k, v in container.items() if k != "ports"}
    played["env"] = [
        {**item, "value": env[item["name"]]} if "value" in item else item
        for item in container.get("env", [])
    ]
    for key in ("command", "args"):
        if key in container:
            played[key] = [expand(str(a), env) for a in container[key]]
    renamed = {v["name"]: f"{name}-{v['name']}" for v in spec.get("volumes", [])}
    played["volumeMounts"] = [
        {**m, "name": renamed[m["name"]]} for m in container.get("volumeMounts", [])
    ]
    volumes = [{**v, "name": renamed[v["name"]]} for v in spec.get("volumes", [])]
    pod_spec = {k: v for k, v in spec.items() if k not in ("initContainers", "containers")}
    pod_spec.update(containers=[played], volumes=volumes)
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if len(str(v)) <= 63}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**meta, "name": name, "annotations": annotations},
        "spec": pod_spec,
    }


def config_maps_of(rendered: Rendered, pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMaps a pod's containers take env from (played beside it)."""
    names = {
        source["configMapRef"]["name"]
        for c in pod_spec.get("initContainers", []) + pod_spec["containers"]
        for source in c.get("envFrom", [])
        if "configMapRef" in source
    }
    return [rendered.get("ConfigMap", name) for name in sorted(names)]


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (512Mi, 1G, 1000) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


# -- probes ------------------------------------------------------------------------------------


def probe_url(container: dict[str, Any], probe: dict[str, Any]) -> str:
    get = probe["httpGet"]
    return f"http://127.0.0.1:{container_port(container, get['port'])}{get['path']}"


def probe_once(container: dict[str, Any], probe: dict[str, Any]) -> bool:
    """One probe as the kubelet sends it: success is a status in [200, 400) within the
    probe's timeout (default 1 s)."""
    try:
        response = httpx.get(probe_url(container, probe), timeout=probe.get("timeoutSeconds", 1))
    except httpx.HTTPError:
        return False
    return 200 <= response.status_code < 400


@dataclass
class Prober:
    """One rendered probe of one container, run in a thread as the kubelet runs it: first at
    initialDelaySeconds, then every periodSeconds; `results` is every (time, success). With a
    ``gate`` (the startup probe), none is sent before the gate has passed: the kubelet holds
    liveness and readiness probes until the startup probe succeeds."""

    kind: str
    container: dict[str, Any]
    probe: dict[str, Any]
    gate: Prober | None = None
    results: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def period(self) -> float:
        return float(self.probe.get("periodSeconds", 10))

    @property
    def failure_threshold(self) -> int:
        return int(self.probe.get("failureThreshold", 3))

    @property
    def success_threshold(self) -> int:
        return int(self.probe.get("successThreshold", 1))

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.kind)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period + 30)

    def _run(self) -> None:
        # The kubelet's schedule is what is emulated here, so it waits by the clock.
        started = time.monotonic()
        while self.gate is not None and self.gate.passed_at() is None:
            if self._stop.wait(0.1):
                return
        delay = self.probe.get("initialDelaySeconds", 0) - (time.monotonic() - started)
        if self._stop.wait(max(0.0, delay)):
            return
        while True:
            self.results.append((time.monotonic(), probe_once(self.container, self.probe)))
            if self._stop.wait(self.period):
                return

    def passed_at(self) -> float | None:
        """When the probe first met its success threshold (consecutive successes)."""
        run = 0
        for at, ok in list(self.results):
            run = run + 1 if ok else 0
            if run >= self.success_threshold:
                return at
        return None

    def failed_at(self, since: float = -math.inf, until: float = math.inf) -> float | None:
        """When failureThreshold consecutive failures (the kubelet gives up: a startup or
        liveness probe restarts the container, a readiness probe unreadies it) first happened
        in [since, until)."""
        run = 0
        for at, ok in list(self.results):
            if not since <= at < until:
                continue
            run = 0 if ok else run + 1
            if run >= self.failure_threshold:
                return at
        return None

    def budget(self) -> float:
        """How long a startup probe lets the container start before the kubelet kills it."""
        return float(self.probe.get("initialDelaySeconds", 0)) + self.period * (
            self.failure_threshold
        )


def probers(container: dict[str, Any]) -> dict[str, Prober]:
    """The container's rendered probes, liveness and readiness gated by startup."""
    found: dict[str, Prober] = {}
    for kind in ("startup", "liveness", "readiness"):
        if f"{kind}Probe" in container:
            found[kind] = Prober(kind, container, container[f"{kind}Probe"], found.get("startup"))
    return found


def service_target(rendered: Rendered, url: str, containers: Mapping[str, dict[str, Any]]) -> str:
    """A URL naming a rendered Service (http://<service>:<port>) as the address of the pod
    behind it on this machine: the Service's targetPort in the container its selector picks.
    ``containers``: {pod template's component label: container}."""
    parsed = httpx.URL(url)
    service = rendered.get("Service", parsed.host)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (parsed.port or 80)]
    component = service["spec"]["selector"]["app.kubernetes.io/component"]
    target = container_port(containers[component], port["targetPort"])
    return str(parsed.copy_with(host="127.0.0.1", port=target))


# -- Prometheus --------------------------------------------------------------------------------


def tool_path(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: run .ci/install-tools")
    return path


def start_prometheus(folder: Path, config: dict[str, Any], name: str) -> tuple[Process, str]:
    """Debian's Prometheus with ``config`` (written to ``folder/<name>.yml``): the process and
    its URL, once ready."""
    binary = tool_path("prometheus")
    port = free_port()
    (folder / f"{name}.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    process = spawn(
        name,
        [
            binary,
            f"--config.file={folder / f'{name}.yml'}",
            f"--storage.tsdb.path={folder / f'{name}-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
        folder,
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/-/ready", timeout=60)
    return process, url


def monitor_scrape_configs(
    rendered: Rendered,
    namespace: str,
    containers: Mapping[str, dict[str, Any]],
    pods: Mapping[str, str],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The scrape configs prometheus-operator would make of the rendered ServiceMonitors (job,
    namespace, service, endpoint, pod labels; the monitors' interval, path and port), and the
    job of each component. The targets are static (no API server to discover them from): the
    Service's target port in the pod behind it. ``containers``: {component: rendered
    container}; ``pods``: {component: the played pod's name}."""
    scrape_configs = []
    jobs: dict[str, str] = {}
    for monitor in rendered.of_kind("ServiceMonitor"):
        service = selected_service(rendered, monitor)
        component = service["metadata"]["labels"][COMPONENT_LABEL]
        for index, endpoint in enumerate(monitor["spec"]["endpoints"]):
            job = operator_job(rendered, monitor, endpoint)
            jobs[component] = job
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
            url = service_target(
                rendered, f"http://{service['metadata']['name']}:{port['port']}", containers
            )
            scrape_configs.append(
                {
                    "job_name": f"serviceMonitor/{namespace}/{monitor['metadata']['name']}/{index}",
                    "scrape_interval": endpoint["interval"],
                    "scrape_timeout": endpoint["scrapeTimeout"],
                    "metrics_path": endpoint["path"],
                    "static_configs": [
                        {
                            "targets": [httpx.URL(url).netloc.decode()],
                            "labels": {
                                "job": job,
                                "namespace": namespace,
                                "service": service["metadata"]["name"],
                                "endpoint": endpoint["port"],
                                "pod": pods[component],
                            },
                        }
                    ],
                }
            )
    return scrape_configs, jobs
