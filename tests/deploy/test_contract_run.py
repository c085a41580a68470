"""The contract: the api and the fetcher run here with exactly the commands, arguments,
environment and ports of their rendered containers (the chart's service host names pointed at
the test servers), and answer on their probe paths and probe ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy_support import (
    RELEASE,
    Rendered,
    container_port,
    local_run,
    pod_annotations,
    probe_url,
    probes,
    render,
    run,
    wait_200,
)
from devstack.procs import free_port
from support import Process, Upstream, spawn

# -- the contract: the rendered containers, run here ----------------------------------------------


@pytest.fixture
def contract_render() -> Rendered:
    """The chart with the replay upstream in, on free ports (so the processes below bind
    exactly the ports the containers declare without colliding with anything here)."""
    return render(
        values={
            "replayUpstream.enabled": True,
            "api.port": free_port(),
            "api.metrics.port": free_port(),
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
    _, argv, env = local_run(
        rendered, "Deployment", fetcher_name, "migrate", local, tmp_path / "migrate"
    )
    migrate = run([*argv], env=env, timeout=120)
    assert migrate.returncode == 0

    container, argv, env = local_run(
        rendered, "Deployment", fetcher_name, "stats-fetcher", local, tmp_path / "fetcher"
    )
    assert env["UPSTREAM_BASE_URL"] == upstream.url + "/"
    fetcher = spawn("contract-fetcher", argv, env, tmp_path)
    contract_processes.append(fetcher)
    fetcher_probes = probes(container)
    wait_200(fetcher, probe_url(container, fetcher_probes["startup"]), timeout=30)
    for kind in ("liveness", "readiness"):
        wait_200(fetcher, probe_url(container, fetcher_probes[kind]), timeout=30)
    api_name = f"{RELEASE}-api"
    container, argv, env = local_run(
        rendered, "Deployment", api_name, "api", local, tmp_path / "api"
    )
    api = spawn("contract-api", argv, env, tmp_path)
    contract_processes.append(api)
    api_probes = probes(container)
    wait_200(api, probe_url(container, api_probes["startup"]), timeout=60)
    wait_200(api, probe_url(container, api_probes["liveness"]), timeout=10)
    # Ready once the fetcher (the leader, refreshing at start) has published.
    wait_200(api, probe_url(container, api_probes["readiness"]), timeout=120)
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
        metrics = wait_200(process, f"http://127.0.0.1:{target}", timeout=10)
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
