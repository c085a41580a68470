"""Helpers of the deploy checks (tests/deploy/) and the containers suite: the deploy tools,
rendering the chart, and reading rendered containers the way the kubelet would (env, $(VAR)
expansion, ports).

The tools come from ``make deploy-tools``: helm and kubectl in .venv/bin, checkov, hadolint
and kubernetes-validate in their own venv, .venv/deploy (see the Makefile's deploy block).
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from covid_stats_runtime import tracing
from devstack.procs import wait_until
from support import REPO, Process, environ_reads

CHART = REPO / "deploy" / "helm" / "covid-stats"
VALUE_SETS = ("default", "external", "ha", "dev", "gitops")
K8S_DIR = REPO / "deploy" / "k8s"
RELEASE = "covid-stats"
# The main container of each of our Deployments: (Deployment, container).
MAIN_CONTAINERS = {
    "api": (f"{RELEASE}-api", "api"),
    "stats-fetcher": (f"{RELEASE}-stats-fetcher", "stats-fetcher"),
    "replay-upstream": (f"{RELEASE}-replay-upstream", "replay-upstream"),
}
# Every minor version the chart supports (Chart.yaml kubeVersion >= 1.29) up to the newest
# kubectl/helm here speak; kubernetes-validate knows their schemas offline.
KUBERNETES_VERSIONS = tuple(f"1.{minor}.0" for minor in range(29, 36))
# Kinds of CRDs (the Prometheus Operator's, the Gateway API's): kubernetes-validate has no
# schema for them (HTTPRoute: validate_httproutes).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}

VENV_BIN = Path(sys.executable).parent
DEPLOY_BIN = Path(sys.prefix) / "deploy" / "bin"
# The Gateway API's schemas (@kubernetes-models/gateway-api, deploy/tools/gateway-api's
# lockfile), installed by `make deploy-tools`; deploy/tools/validate_httproute.mjs uses them.
GATEWAY_API_MODULES = Path(sys.prefix) / "deploy" / "gateway-api" / "node_modules"


def tool(name: str) -> Path:
    """A deploy tool's path; fails (not skips) when missing: `make test` installs them."""
    for folder in (VENV_BIN, DEPLOY_BIN):
        path = folder / name
        if path.is_file():
            return path
    pytest.fail(f"{name} is not installed: run `make deploy-tools` (make test does)")


def validate_httproutes(routes: list[dict[str, Any]], folder: Path) -> Any:
    """deploy/tools/validate_httproute.mjs on each route (written to ``folder`` as JSON): the
    CompletedProcess; exit 1 and a line per invalid route when any is invalid."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the HTTPRoute validation runs under node)")
    if not (GATEWAY_API_MODULES / "@kubernetes-models" / "gateway-api").is_dir():
        pytest.fail("the Gateway API schemas are not installed: run `make deploy-tools`")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, route in enumerate(routes):
        path = folder / f"httproute-{index}.json"
        path.write_text(json.dumps(route))
        files.append(path)
    script = REPO / "deploy" / "tools" / "validate_httproute.mjs"
    return run([node, script, GATEWAY_API_MODULES, *files], check=False)


def optional_module(name: str) -> Any:
    """jsonschema and kubernetes, installed into .venv by `make deploy-tools`. Imported by
    name so that `make lint` (mypy) passes before they are installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"the {name} package is not installed: run `make deploy-tools`")


def run(argv: list[str | Path], *, check: bool = True, **kwargs: Any) -> Any:
    """Run a tool; returns the CompletedProcess (text). ``check``: fail the test on non-zero."""
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a) for a in argv)} exited {result.returncode}:\n"
            f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
        )
    return result


def values_file(value_set: str) -> Path:
    return CHART / "ci" / f"{value_set}-values.yaml"


def nested_values(flat: Mapping[str, object]) -> dict[str, Any]:
    """{"a.b": 1} as a values file holds it: {"a": {"b": 1}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def set_args(values: Mapping[str, object]) -> list[str]:
    args = []
    for key, value in values.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        args += ["--set-json" if not isinstance(value, str) else "--set-string", f"{key}={text}"]
    return args


def helm_template(
    *values_files: Path,
    values: Mapping[str, object] | None = None,
    check: bool = True,
    extra: Iterable[str] = (),
) -> Any:
    """`helm template` of the chart; ``extra``: more helm arguments (--no-hooks)."""
    argv: list[str | Path] = [tool("helm"), "template", RELEASE, CHART, *extra]
    for path in values_files:
        argv += ["--values", path]
    argv += set_args(values or {})
    return run(argv, check=check)


@dataclass
class Rendered:
    """Rendered manifests: the documents, by kind and name."""

    text: str
    docs: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.docs = [d for d in yaml.safe_load_all(self.text) if d]

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
        return found[0]

    def maybe(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment", "StatefulSet", "Job", "Pod")

    def pod_spec(self, doc: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = (
            doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        )
        return spec

    def pod_labels(self, doc: dict[str, Any]) -> dict[str, str]:
        meta = doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]
        labels: dict[str, str] = meta.get("labels", {})
        return labels

    def container(self, kind: str, name: str, container: str) -> dict[str, Any]:
        spec = self.pod_spec(self.get(kind, name))
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c["name"] == container:
                return dict(c)
        raise AssertionError(f"{kind}/{name} has no container {container}")

    def secret_value(self, name: str, key: str) -> str | None:
        secret = self.maybe("Secret", name)
        if secret is None:
            return None
        return base64.b64decode(secret["data"][key]).decode()


def render(*values_files: Path, values: Mapping[str, object] | None = None) -> Rendered:
    return Rendered(helm_template(*values_files, values=values).stdout)


_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of $(VAR) in env values, command and args: a defined variable is
    replaced, an undefined reference is left as it is, $$ is a literal $."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(sub, text)


def container_env(
    rendered: Rendered,
    container: dict[str, Any],
    secrets: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, str]:
    """The environment a container starts with, as the kubelet builds it: envFrom ConfigMaps,
    then env in order (values expanded against what is defined before them). Secret values
    come from the rendered Secrets, else from ``secrets`` {(name, key): value}."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        config = rendered.get("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in config.get("data", {}).items()})
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            secret, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            value = rendered.secret_value(secret, key)
            if value is None:
                if ref["secretKeyRef"].get("optional") and (secret, key) not in (secrets or {}):
                    continue  # the kubelet leaves an optional variable of no Secret unset
                value = (secrets or {})[(secret, key)]
            env[name] = value
        elif "configMapKeyRef" in ref:
            config = rendered.get("ConfigMap", ref["configMapKeyRef"]["name"])
            env[name] = str(config["data"][ref["configMapKeyRef"]["key"]])
        else:
            raise AssertionError(f"unsupported env source {item}")
    return env


def container_argv(container: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args, with $(VAR) expanded. The chart always sets both: the image's
    ENTRYPOINT/CMD never decide what runs (a test compares them with the Dockerfiles')."""
    assert container.get("command"), f"{container['name']}: no command"
    return [expand(str(a), env) for a in container["command"] + container.get("args", [])]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"{container['name']} has no port named {port}")


def probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: container[f"{kind}Probe"]
        for kind in ("startup", "liveness", "readiness")
        if f"{kind}Probe" in container
    }


def dockerfile_stages(path: Path) -> list[dict[str, Any]]:
    """A Dockerfile's stages: base (with the default of a global ARG it names), name, and
    instructions (continuations joined)."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[dict[str, Any]] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM: what FROM lines may use
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            arg, _, default = rest.strip().partition("=")
            global_args[arg] = default
        elif instruction == "FROM":
            for arg, default in global_args.items():
                rest = rest.replace(f"${{{arg}}}", default).replace(f"${arg}", default)
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"base": words[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((instruction, rest.strip()))
    return stages


def stage_chain(stages: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """A stage and the stages it is built FROM, nearest first."""
    by_name = {s["name"]: s for s in stages if s["name"]}
    chain = [stages[index]]
    while chain[-1]["base"] in by_name:
        chain.append(by_name[chain[-1]["base"]])
    return chain


def last_instruction(chain: Iterable[dict[str, Any]], instruction: str) -> str | None:
    for stage in chain:
        for name, rest in reversed(stage["instructions"]):
            if name == instruction:
                return str(rest)
    return None


def service_settings() -> dict[str, set[str]]:
    """The variables each service's settings class reads: {service: {VARIABLE, ...}} (the
    source of docs/configuration.md's table, `make config-docs`)."""
    from devstack.config_docs import SERVICES

    return {service: set(settings.env_vars()) for service, settings in SERVICES.items()}


# Variables the services read that are not their settings: those each one's own code reads
# (found in its source: prometheus_client's multiprocess folder, the api's), and
# OpenTelemetry's OTEL_* (both services, through covid_stats_runtime.tracing).
LIBRARY_ENV = {
    service: {
        variable
        for path in (REPO / "services" / service / "src").rglob("*.py")
        for variable in environ_reads(path)
    }
    for service in ("api", "stats-fetcher")
}
LIBRARY_ENV_PREFIX = tracing.OTEL_ENV_PREFIX


COMPONENT_LABEL = "app.kubernetes.io/component"


def selected_service(rendered: Rendered, monitor: dict[str, Any]) -> dict[str, Any]:
    """The one (non-headless) Service of the render a ServiceMonitor scrapes: selected by its
    labels and having a port its endpoints name (prometheus-operator finds no target in a
    selected Service without that port: the api's own Service, beside its metrics one)."""
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    services = [
        s
        for s in rendered.of_kind("Service")
        if selector.items() <= s["metadata"].get("labels", {}).items()
        and s["spec"].get("clusterIP") != "None"
        and ports & {port.get("name") for port in s["spec"]["ports"]}
    ]
    assert len(services) == 1, f"{monitor['metadata']['name']} selects {len(services)} Services"
    return services[0]


def operator_job(rendered: Rendered, monitor: dict[str, Any], endpoint: dict[str, Any]) -> str:
    """The `job` label prometheus-operator gives the targets of one ServiceMonitor endpoint:
    the Service's name, or the value of the Service label named by spec.jobLabel; then the
    endpoint's own relabelings, which the operator appends after its own (only `replace` of a
    fixed value into `job` is modelled: anything else that touches `job` fails here)."""
    service = selected_service(rendered, monitor)
    job = str(service["metadata"]["name"])
    if monitor["spec"].get("jobLabel"):
        job = str(service["metadata"]["labels"].get(monitor["spec"]["jobLabel"], job))
    for relabel in endpoint.get("relabelings", []):
        if relabel.get("targetLabel") != "job":
            continue
        assert relabel.get("action", "replace") == "replace", relabel
        assert not relabel.get("sourceLabels"), f"job from source labels: {relabel}"
        job = str(relabel["replacement"])
    return job


def operator_jobs(rendered: Rendered) -> dict[str, str]:
    """{component: job} for every ServiceMonitor of the render (one job per component)."""
    jobs: dict[str, str] = {}
    for monitor in rendered.of_kind("ServiceMonitor"):
        component = selected_service(rendered, monitor)["metadata"]["labels"][COMPONENT_LABEL]
        found = {operator_job(rendered, monitor, ep) for ep in monitor["spec"]["endpoints"]}
        assert len(found) == 1, f"{component}: endpoints with different jobs {found}"
        jobs[component] = found.pop()
    return jobs


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """A Grafana dashboard's panels, those of collapsed rows included."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


# Grafana's variables in the dashboard's queries, as a Prometheus-only client sets them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}


def dashboard_queries(panels: list[dict[str, Any]]) -> dict[str, str]:
    """{"<panel id>_<refId>": the PromQL query with Grafana's variables set} of every panel."""
    queries = {}
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown Grafana variable in {target['expr']}"
            queries[f"{panel['id']}_{target['refId']}"] = expr
    return queries


def api_metrics_port(rendered: Rendered) -> dict[str, Any] | None:
    """The api container's port that API_METRICS_PORT names, if the api serves metrics."""
    number = int(rendered.get("ConfigMap", f"{RELEASE}-api")["data"]["API_METRICS_PORT"])
    pod = rendered.pod_spec(rendered.get("Deployment", f"{RELEASE}-api"))
    (container,) = [c for c in pod["containers"] if c["name"] == "api"]
    ports = [p for p in container["ports"] if p["containerPort"] == number]
    assert len(ports) == (1 if number else 0), container["ports"]
    return ports[0] if ports else None


def images_of(rendered: Rendered, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(container name, image) of every container of a workload, init containers included."""
    spec = rendered.pod_spec(doc)
    return [(c["name"], c["image"]) for c in spec.get("initContainers", []) + spec["containers"]]


# The value blocks of the official images the chart runs (Docker Hub's, never built here).
OFFICIAL_IMAGE_BLOCKS = ("redis", "postgresql", "edgeCache")
# Every workload and container the chart can run: the optional ones, the hooks, the edge cache
# with its exporter sidecar.
EVERY_WORKLOAD_ON = {
    "replayUpstream.enabled": True,
    "migration.enabled": True,
    "tests.enabled": True,
    "edgeCache.enabled": True,
}


def built_images(registry: str = "") -> set[str]:
    """What `make images` must build and `make push` push: every image the chart names with
    every workload on (EVERY_WORKLOAD_ON) and ``global.imageRegistry=registry``, as rendered,
    but the official ones (OFFICIAL_IMAGE_BLOCKS', as rendered). Read from the chart, never
    from deploy/tools/, so a release that leaves an image out fails against it."""
    values: dict[str, object] = dict(EVERY_WORKLOAD_ON)
    if registry:
        values["global.imageRegistry"] = registry
    rendered = render(values=values)
    named = {image for doc in rendered.workloads() for _, image in images_of(rendered, doc)}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    official = set()
    for block in OFFICIAL_IMAGE_BLOCKS:
        image = defaults[block]["image"]
        ref = f"{image['repository']}:{image['tag'] or app_version}"
        official.add(f"{registry}/{ref}" if registry else ref)
    assert official <= named, (official, named)
    return named - official


def pod_annotations(rendered: Rendered, deployment: str) -> dict[str, str]:
    doc = rendered.get("Deployment", deployment)
    annotations: dict[str, str] = doc["spec"]["template"]["metadata"]["annotations"]
    return annotations


def fake_secrets(rendered: Rendered) -> dict[tuple[str, str], str]:
    """Values for the Secrets a value set names but does not create (existingSecret)."""
    fake = {}
    for doc in rendered.workloads():
        spec = rendered.pod_spec(doc)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                # an optional one of no Secret is left unset, as the kubelet does
                if (
                    ref
                    and not ref.get("optional")
                    and rendered.maybe("Secret", ref["name"]) is None
                ):
                    short = "db" if "database" in ref["name"] else ref["name"].split("-")[-2]
                    fake[(ref["name"], ref["key"])] = f"{short}-secret"
    return fake


# -- running the rendered containers here (the contract and discovery tests) --------------


def map_service_urls(
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


def map_volumes(env: dict[str, str], container: dict[str, Any], scratch: Path) -> dict[str, str]:
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


def local_run(
    rendered: Rendered,
    kind: str,
    workload: str,
    container_name: str,
    local: dict[str, str],
    scratch: Path,
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    container = rendered.container(kind, workload, container_name)
    env = container_env(rendered, container)
    env = map_service_urls(env, rendered, local)
    env = map_volumes(env, container, scratch)
    argv = container_argv(container, env)
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(home), "LANG": "C.UTF-8"}
    full_env = {**base, **env}
    executable = shutil.which(argv[0], path=full_env["PATH"])
    assert executable, argv[0]
    assert Path(executable).parent == VENV_BIN, f"{argv[0]}: {executable}"
    return container, argv, full_env


def probe_url(container: dict[str, Any], probe: dict[str, Any]) -> str:
    get = probe["httpGet"]
    return f"http://127.0.0.1:{container_port(container, get['port'])}{get['path']}"


def wait_200(process: Process, url: str, timeout: float) -> httpx.Response:
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


def checkov_kubernetes(folder: Path) -> subprocess.CompletedProcess[str]:
    """checkov's kubernetes checks, with deploy/checkov.yaml's skips, on the manifests in
    ``folder`` (compact and quiet: only what fails is printed)."""
    result: subprocess.CompletedProcess[str] = run(
        [
            tool("checkov"),
            "--config-file",
            REPO / "deploy" / "checkov.yaml",
            "--framework",
            "kubernetes",
            "-d",
            folder,
            "--compact",
            "--quiet",
        ],
        check=False,
        cwd=REPO,
    )
    return result
