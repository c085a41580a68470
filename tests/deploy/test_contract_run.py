"""The contract: the api and the fetcher run here with exactly the commands, arguments,
environment and ports of their rendered containers (the chart's service host names pointed at
the test servers), and answer on their probe paths and probe ports."""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy_support import (
    RELEASE,
    VENV_BIN,
    Rendered,
    container_argv,
    container_env,
    container_port,
    pod_annotations,
    probes,
    render,
    run,
)
from devstack.procs import free_port, wait_until
from support import Process, Upstream, spawn

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
        annotations = pod_annotations(rendered, name)
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        target = f"{annotations['prometheus.io/port']}{annotations['prometheus.io/path']}"
        metrics = _wait_200(process, f"http://127.0.0.1:{target}", timeout=10)
        assert list(text_string_to_metric_families(metrics.text)), name
        scraped.append(name)
    assert fetcher_name in scraped
    if api_name in scraped:  # ... and not on the port the api's Service (an Ingress) exposes
        path = pod_annotations(rendered, api_name)["prometheus.io/path"]
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 404

    # SIGTERM: both stop cleanly within their termination grace periods.
    for process, name in ((api, api_name), (fetcher, fetcher_name)):
        grace = rendered.pod_spec(rendered.get("Deployment", name))["terminationGracePeriodSeconds"]
        started = time.monotonic()
        code = process.stop(timeout=grace)
        assert code == 0, f"{process.name} exited {code}:\n{process.output()[-3000:]}"
        assert time.monotonic() - started < grace
