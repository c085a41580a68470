"""The chart's edge cache (edgeCache) played with podman in front of the containers suite's api
pod (tests/containers/test_pods.py, `test_the_edge_pod_caches_and_purges_by_surrogate_key`).

The edge's Deployment and ConfigMap are rendered from the chart (ci/containers-values.yaml
plus edgeCache on, its three ports free ones of this machine, the purge ACL loopback: the
pods share the host's network) and played as tests/pods.py plays the others, with what podman
4.3 needs done here:
- the edge pod has two containers (varnishd and the exporter); :func:`tests.pods.for_podman`
  plays one: each is made into a played pod the same way and the two joined;
- no Service exists: each of the VCL's backends (the api Service's name and port; the
  questions' too with questions.enabled) is that Service's target port on this machine
  (:func:`tests.pods.service_target`), the lines changed in the played ConfigMap;
- the images: the official varnish image cannot be pulled here; the stand-in `make images`
  builds the exporter on (build_images.VARNISH_STAND_IN: tests/containers/edge/Containerfile on
  the stand-in Debian base, with Debian's varnish, varnish-modules and
  prometheus-varnish-exporter) is tagged exactly as the chart renders it when it is missing
  (built first if `make images` has not); the exporter's image is `make images`' (when
  missing, deploy/varnish/exporter.Dockerfile built on that varnish image).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from deploy_support import Rendered, container_port, helm_template, nested_values
from devstack.procs import free_port, wait_until
from pods import Pod, Podman, _pod, service_target

HERE = Path(__file__).resolve().parent
# deploy/tools/build_images.py: the stand-ins' names and files (one place for them)
sys.path.insert(0, str(HERE.parents[1] / "deploy" / "tools"))
build_images: Any = importlib.import_module("build_images")
STAND_IN = build_images.VARNISH_STAND_IN_FILE
STAND_IN_REF = build_images.VARNISH_STAND_IN
EXPORTER_DOCKERFILE = HERE.parents[1] / "deploy" / "varnish" / "exporter.Dockerfile"


def render_edge(values_file: Path, folder: Path) -> Rendered:
    path = folder / "edge-values.json"
    path.write_text(
        json.dumps(
            nested_values(
                {
                    "edgeCache.enabled": True,
                    "edgeCache.port": free_port(),
                    "edgeCache.purgePort": free_port(),
                    "edgeCache.metrics.port": free_port(),
                    "edgeCache.purge.acl": ["127.0.0.1", "::1"],
                    # The stores the chart requires with containers-values' external ones (the
                    # edge's Deployment and ConfigMap do not depend on them).
                    "externalRedis.host": "127.0.0.1",
                    "externalDatabase.host": "127.0.0.1",
                    "externalDatabase.password": "unused",
                }
            )
        )
    )
    return Rendered(helm_template(values_file, path).stdout)


def edge_deployment(rendered: Rendered) -> dict[str, Any]:
    (doc,) = [
        d
        for d in rendered.of_kind("Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        == "edge-cache"
    ]
    return doc


def local_ref(ref: str) -> str:
    """How podman stores a short name it builds or tags (localhost/<name>:<tag>)."""
    return ref if "/" in ref.split(":")[0] else f"localhost/{ref}"


def ensure_images(podman: Podman, varnish: str, exporter: str) -> None:
    """The rendered images; where missing, the varnish one is the stand-in, and the exporter's
    is deploy/varnish/exporter.Dockerfile built on that varnish image, as it would be on the
    official one."""
    if not podman.image_exists(varnish):
        if not podman.image_exists(STAND_IN_REF):
            podman.run(
                *("build", "--build-arg", f"BASE_IMAGE={build_images.STAND_IN}"),
                *("-t", STAND_IN_REF, "-f", str(STAND_IN), str(STAND_IN.parent)),
                timeout=900,
            )
        podman.run("tag", STAND_IN_REF, local_ref(varnish))
    if not podman.image_exists(exporter):
        podman.run(
            *(
                "build",
                "--build-arg",
                f"BASE_IMAGE={local_ref(varnish)}",
                "-t",
                local_ref(exporter),
            ),
            *("-f", str(EXPORTER_DOCKERFILE), str(EXPORTER_DOCKERFILE.parent)),
            timeout=900,
        )
    for ref in (varnish, exporter):
        assert podman.image_exists(ref), ref


def play_edge(
    podman: Podman,
    rendered: Rendered,
    containers: Mapping[str, dict[str, Any]],
    folder: Path,
) -> tuple[Pod, dict[str, Any], Path]:
    """Play the edge pod; returns it, its rendered Deployment and the played file.
    ``containers``: the played containers its VCL's backends reach, by component (the api's;
    the questions' too with questions.enabled)."""
    doc = edge_deployment(rendered)
    name = doc["metadata"]["name"]
    meta, spec = doc["spec"]["template"]["metadata"], doc["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in spec["containers"]}
    ensure_images(podman, images["varnish"], images["exporter"])
    pods = [_pod(rendered, name, meta, spec, c) for c in spec["containers"]]
    played = pods[0]
    played["spec"]["containers"] = [c for p in pods for c in p["spec"]["containers"]]
    (vcl_volume,) = [v for v in spec["volumes"] if "configMap" in v]
    config = rendered.get("ConfigMap", vcl_volume["configMap"]["name"])
    (key,) = config["data"]

    def to_target(block: re.Match[str]) -> str:
        text = block[0]
        host = re.search(r'\.host\s*=\s*"([^"]*)"', text)
        port = re.search(r'\.port\s*=\s*"([^"]*)"', text)
        assert host, text
        assert port, text
        target = httpx.URL(service_target(rendered, f"http://{host[1]}:{port[1]}", containers))
        return text.replace(host[0], f'.host = "{target.host}"').replace(
            port[0], f'.port = "{target.port}"'
        )

    vcl, backends = re.subn(r"(?s)\nbackend \w+ \{.*?\n\}", to_target, config["data"][key])
    assert backends >= 1, vcl
    config = {**config, "data": {key: vcl}}
    path = folder / "edge-cache.yaml"
    (pod,) = podman.play([config, played], path)
    return pod, doc, path


def wait_serving(pod: Pod, check: Callable[[], bool], what: str) -> None:
    def ready() -> bool:
        states = {c["Name"]: c["State"] for c in pod.inspect()["Containers"]}
        stopped = [
            n for n, s in states.items() if s not in ("running", "created") and "infra" not in n
        ]
        if stopped:
            logs = "\n".join(pod.logs(n.removeprefix(f"{pod.name}-"))[-2000:] for n in stopped)
            raise AssertionError(f"{stopped} stopped:\n{logs}")
        return check()

    wait_until(ready, 90, interval=0.2, what=what)


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def rendered_ports(doc: dict[str, Any]) -> dict[str, int]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    return {
        name: container_port(c, name)
        for c in containers
        for name in ("http", "purge", "metrics")
        if any(p["name"] == name for p in c.get("ports", []))
    }


def age(response: httpx.Response) -> int:
    return int(response.headers.get("age", "0"))


def prove(pod: Pod, doc: dict[str, Any], api_url: str, path: str = "/v1/us/daily.json") -> None:
    """A document through the edge pod (its rendered ports): cached, aged, purged by one of its
    Surrogate-Key keys on the purge port, fetched anew; PURGE refused on the client port; the
    exporter serving varnishd's counters."""
    ports = rendered_ports(doc)
    url = f"http://127.0.0.1:{ports['http']}{path}"
    metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
    wait_serving(pod, lambda: answers(url), "the edge's client port")
    with httpx.Client(timeout=10) as client:
        keys = client.get(f"{api_url}{path}").headers.get("surrogate-key")
        assert keys, "the api serves no Surrogate-Key (issue 25 item 1)"
        first = client.get(url)
        assert first.status_code == 200
        wait_until(lambda: age(client.get(url)) >= 1, 10, what="the copy aging")
        hit = client.get(url)
        assert hit.headers["x-cache"] == "HIT"
        assert hit.content == first.content
        assert "surrogate-key" not in hit.headers  # the VCL strips it
        key = keys.split()[0]
        refused = client.request("PURGE", url, headers={"xkey-purge": key})
        assert refused.status_code == 405
        purge = f"http://127.0.0.1:{ports['purge']}/"
        purged = client.request("PURGE", purge, headers={"xkey-purge": key})
        assert purged.status_code == 200, purged.text
        assert purged.json()["purged"] >= 1, purged.text
        fresh = client.get(url)
        assert fresh.headers["x-cache"] == "MISS"
        assert age(fresh) < age(hit)
        wait_until(lambda: "\nvarnish_up 1" in client.get(metrics).text, 30, what="the exporter")
        # The exporter's counters carry no _total (prometheus_client's parser would add it).
        hits = re.search(r"(?m)^varnish_main_cache_hit (\S+)$", client.get(metrics).text)
        assert hits, "no varnish_main_cache_hit"
        assert float(hits[1]) >= 1
