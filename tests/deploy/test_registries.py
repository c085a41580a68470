"""Registries and pull secrets: every image from the registry the values name, tags, digests."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    COMPONENT_LABEL,
    RELEASE,
    Rendered,
    helm_template,
    images_of,
    nested_values,
    render,
    run,
    set_args,
    tool,
)
from support import REPO

# -- registries and pull secrets ----------------------------------------------------------------

# The value blocks holding an image, and the workloads running it (kind, name, container).
IMAGE_BLOCKS = ("api", "statsFetcher", "replayUpstream", "redis", "postgresql")
ALL_WORKLOADS_ON = {
    "replayUpstream.enabled": True,
    "migration.enabled": True,
    "tests.enabled": True,
}


def _block_of_container(doc: dict[str, Any], container: str) -> str:
    """The value block whose image a container runs: the component label says which, the
    migration, test and init containers run the fetcher's or the api's."""
    component = doc["metadata"]["labels"][COMPONENT_LABEL]
    return {
        "api": "api",
        "test": "api",
        "stats-fetcher": "statsFetcher",
        "migrate": "statsFetcher",
        "replay-upstream": "replayUpstream",
        "redis": "redis",
        "postgresql": "postgresql",
    }[component]


def _expected_image(values: dict[str, Any], block: str, app_version: str) -> str:
    image = values[block]["image"]
    registry = image.get("registry") or values.get("global", {}).get("imageRegistry", "")
    ref = f"{image['repository']}:{image['tag'] or app_version}"
    if registry:
        ref = f"{registry}/{ref}"
    if image["digest"]:
        ref = f"{ref}@{image['digest']}"
    return ref


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"global.imageRegistry": "registry.example:5000/team"},
        {
            "global.imageRegistry": "registry.example/team",
            "api.image.registry": "ghcr.io/us",
            "redis.image.registry": "mirror.example",
            "postgresql.image.digest": "sha256:" + "1" * 64,
        },
        {"statsFetcher.image.registry": "ghcr.io/us"},
    ],
    ids=["defaults", "global", "per-image-wins", "per-image-alone"],
)
def test_images_come_from_the_registry_the_values_name(overrides: dict[str, object]) -> None:
    """Every container's image is [<registry>/]<repository>:<tag>[@<digest>], the registry
    being the image's own, else global.imageRegistry, else none: with the defaults the
    references are the local names the containers suite runs (covid-stats-api:<appVersion>)."""
    rendered = render(values={**ALL_WORKLOADS_ON, **overrides})
    values = nested_values({**ALL_WORKLOADS_ON, **overrides})
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for block in IMAGE_BLOCKS:
        defaults[block]["image"].update(values.get(block, {}).get("image", {}))
    defaults["global"].update(values.get("global", {}))
    app_version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    seen = set()
    for doc in rendered.workloads():
        for container, image in images_of(rendered, doc):
            block = _block_of_container(doc, container)
            seen.add(block)
            assert image == _expected_image(defaults, block, app_version), (
                doc["metadata"]["name"],
                container,
            )
    assert seen == set(IMAGE_BLOCKS)
    if not overrides:
        assert rendered.container("Deployment", f"{RELEASE}-api", "api")["image"] == (
            f"covid-stats-api:{app_version}"
        )


def _build_images(chart: Path = CHART) -> Any:
    """deploy/tools/build_images.py, reading ``chart``."""
    spec = importlib.util.spec_from_file_location(
        "build_images", REPO / "deploy" / "tools" / "build_images.py"
    )
    assert spec is not None
    assert spec.loader is not None
    build_images: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_images)
    build_images.CHART = chart
    return build_images


def _built_refs(rendered: Rendered) -> dict[str, str]:
    """{block: image} of the containers running the images `make images` builds."""
    return {
        block: rendered.container("Deployment", f"{RELEASE}-{name}", container)["image"]
        for block, name, container in (
            ("api", "api", "api"),
            ("statsFetcher", "stats-fetcher", "stats-fetcher"),
            ("replayUpstream", "replay-upstream", "replay-upstream"),
            ("edgeCache.metrics", "edge-cache", "exporter"),
        )
    }


BUILT_ON = {"replayUpstream.enabled": True, "edgeCache.enabled": True}


def test_make_images_tags_the_images_as_the_default_values_name_them() -> None:
    """`make images` (deploy/tools/build_images.py reads values.yaml without a YAML parser)
    builds exactly the references the default render runs, the edge cache's exporter sidecar
    (its tag the edge's Varnish tag) with edgeCache on: the containers suite needs them."""
    assert _build_images().image_refs() == _built_refs(render(values=BUILT_ON))


@pytest.mark.parametrize(
    "overrides",
    [
        {"edgeCache.image.tag": "7.7.0"},
        {"edgeCache.metrics.image.tag": "7.6.1-2", "api.image.tag": "0.2.0"},
        {"edgeCache.metrics.image.repository": "team/exporter", "edgeCache.image.tag": "8.0"},
    ],
    ids=["edge-tag", "own-tags", "repository"],
)
def test_make_images_follows_changed_values(overrides: dict[str, str], tmp_path: Path) -> None:
    """build_images.py's reading of values.yaml (no YAML parser) against helm's, on a copy of
    the chart whose values.yaml (re-serialized, another layout than ours) changes tags and
    repositories: the exporter's tag follows edgeCache.image.tag unless its own is set."""
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False, width=1000))
    rendered = Rendered(run([tool("helm"), "template", RELEASE, chart, *set_args(BUILT_ON)]).stdout)
    refs = _build_images(chart).image_refs()
    assert refs == _built_refs(rendered)
    assert any(value in ref for ref in refs.values() for value in overrides.values()), refs


def test_pull_secrets_take_names_or_objects_and_reach_every_pod() -> None:
    rendered = render(
        values={**ALL_WORKLOADS_ON, "imagePullSecrets": ["regcred", {"name": "mirror-cred"}]}
    )
    expected = [{"name": "regcred"}, {"name": "mirror-cred"}]
    workloads = rendered.workloads()
    assert {d["kind"] for d in workloads} == {"Deployment", "StatefulSet", "Job", "Pod"}
    for doc in workloads:
        assert rendered.pod_spec(doc)["imagePullSecrets"] == expected, doc["metadata"]["name"]
    bare = render()
    for doc in bare.workloads():
        assert "imagePullSecrets" not in bare.pod_spec(doc), doc["metadata"]["name"]


def test_helm_test_pod_is_scheduled_like_the_api() -> None:
    """The `helm test` pod runs the api's image: it gets the api's pull secrets, node
    selector, tolerations and affinity (private registries, tainted or dedicated nodes)."""
    scheduling = {
        "api.nodeSelector": {"pool": "web"},
        "api.tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web"}],
        "api.affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["x"]}]}
                    ]
                }
            }
        },
        "imagePullSecrets": [{"name": "regcred"}],
    }
    rendered = render(values=scheduling)
    api = rendered.pod_spec(rendered.get("Deployment", f"{RELEASE}-api"))
    (test_pod,) = rendered.of_kind("Pod")
    spec = rendered.pod_spec(test_pod)
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
        assert spec[key] == api[key], key
    bare = render().of_kind("Pod")[0]["spec"]
    assert not {"imagePullSecrets", "nodeSelector", "tolerations", "affinity"} & set(bare)


def test_a_tag_with_a_digest_renders_alone_and_is_refused_with_a_digest_too() -> None:
    """skaffold sets `<tag>@<digest>` as the tag: fine alone, refused with `digest` as well
    (the reference would carry two digests)."""
    pinned = "0.1.0@sha256:" + "a" * 64
    digest = "sha256:" + "b" * 64
    for block in IMAGE_BLOCKS:
        result = helm_template(
            values={
                "replayUpstream.enabled": True,
                f"{block}.image.tag": pinned,
                f"{block}.image.digest": digest,
            },
            check=False,
        )
        assert result.returncode != 0, block
        assert (
            f"{block}.image.tag ({pinned}) already pins a digest and {block}.image.digest "
            f"({digest}) is set too" in result.stderr
        ), result.stderr
    rendered = render(values={"api.image.tag": pinned})
    assert rendered.container("Deployment", f"{RELEASE}-api", "api")["image"].endswith(pinned)
