"""The images and the scanners: Dockerfiles multi-stage, a pinned slim base, a numeric non-root
user, a CMD that is exactly what the chart runs; skaffold.yaml validates against
../shared/schemas/skaffold-v4beta14.json and builds our images; hadolint and checkov
(kubernetes, helm, dockerfile; skips: deploy/checkov.yaml) pass.

The images are built and the chart's pods run from them in the containers suite
(tests/containers/, `make test-containers`); here their Dockerfiles are linted."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    K8S_DIR,
    MAIN_CONTAINERS,
    RELEASE,
    VENV_BIN,
    Rendered,
    dockerfile_stages,
    last_instruction,
    optional_module,
    render,
    run,
    stage_chain,
    tool,
    values_file,
)
from support import REPO

SKAFFOLD_SCHEMA = REPO.parent / "shared" / "schemas" / "skaffold-v4beta14.json"
DOCKERFILES = {
    "api": REPO / "services" / "api" / "Dockerfile",
    "stats-fetcher": REPO / "services" / "stats-fetcher" / "Dockerfile",
    "replay-upstream": REPO / "tools" / "replay-upstream" / "Dockerfile",
}


# -- skaffold ---------------------------------------------------------------------------------


def _skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return config


@pytest.mark.skipif(
    not SKAFFOLD_SCHEMA.is_file(),
    reason=f"{SKAFFOLD_SCHEMA} is absent (../shared is not beside the repository)",
)
def test_skaffold_yaml_validates_against_its_schema() -> None:
    jsonschema = optional_module("jsonschema")
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    config = _skaffold()
    errors = [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(config)]
    assert not errors, "\n".join(errors)
    assert config["apiVersion"] == "skaffold/v4beta14"
    # The validation means something: a misspelt key is an error.
    config["build"]["artifacts"][0]["docker"]["dockerfil"] = "Dockerfile"
    assert list(validator.iter_errors(config))


def test_skaffold_builds_our_images_and_injects_them_into_the_chart() -> None:
    config = _skaffold()
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]) == CHART
    templates = release["setValueTemplates"]
    for key, name in (
        ("api", "api"),
        ("statsFetcher", "stats-fetcher"),
        ("replayUpstream", "replay-upstream"),
    ):
        image = values[key]["image"]["repository"]
        artifact = artifacts[image]
        assert artifact["context"] == "."
        assert (REPO / artifact["docker"]["dockerfile"]) == DOCKERFILES[name]
        variable = image.replace("-", "_")
        assert templates[f"{key}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{key}.image.tag"] == (
            f"{{{{.IMAGE_TAG_{variable}}}}}@{{{{.IMAGE_DIGEST_{variable}}}}}"
        )
    # The injected form of an image reference renders (the schema accepts tag@digest).
    digest = "sha256:" + "0" * 64
    rendered = render(
        values={
            "api.image.repository": "registry.example/covid-stats-api",
            "api.image.tag": f"abc123@{digest}",
        }
    )
    api = rendered.container("Deployment", f"{RELEASE}-api", "api")
    assert api["image"] == f"registry.example/covid-stats-api:abc123@{digest}"
    forwards = config["portForward"]
    assert forwards == [
        {
            "resourceType": "service",
            "resourceName": f"{RELEASE}-api",
            "port": values["api"]["service"]["port"],
            "localPort": 8000,
        }
    ]
    # The dev profile: the api's dev target with file sync into its site-packages (the same
    # Python as the image's), the dev values (one worker, reload, the replay upstream).
    (profile,) = config["profiles"]
    assert profile["activation"] == [{"command": "dev"}]
    patches = {p["path"]: p["value"] for p in profile["patches"]}
    assert patches["/build/artifacts/0/docker/target"] == "dev"
    assert config["build"]["artifacts"][0]["image"] == "covid-stats-api"
    python = re.search(r"python:(\d+\.\d+)\.", DOCKERFILES["api"].read_text())
    assert python
    for rule in patches["/build/artifacts/0/sync"]["manual"]:
        assert rule["dest"] == f"/opt/venv/lib/python{python[1]}/site-packages"
        assert (REPO / rule["src"].split("/**")[0]).is_dir(), rule
    dev_values = yaml.safe_load(values_file("dev").read_text())
    assert patches["/deploy/helm/releases/0/valuesFiles"] == [
        str(values_file("dev").relative_to(REPO))
    ]
    assert dev_values["api"]["workers"] == 1
    assert dev_values["api"]["reload"] is True
    assert dev_values["replayUpstream"]["enabled"] is True
    stages = {s["name"] for s in dockerfile_stages(DOCKERFILES["api"])}
    assert {"dev", "runtime"} <= stages


# -- the images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_multi_stage_slim_pinned_and_non_root(name: str) -> None:
    stages = dockerfile_stages(DOCKERFILES[name])
    assert len(stages) >= 2, "multi-stage"
    named = {s["name"] for s in stages}
    for stage in stages:
        base = stage["base"]
        assert base in named or re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", base), base
    final = stage_chain(stages, len(stages) - 1)
    assert final[-1]["base"].startswith("python:")
    user = last_instruction(final, "USER")
    assert user
    assert re.fullmatch(r"\d+:\d+", user), user
    assert int(user.split(":")[0]) >= 10000
    for stage in final:
        for instruction, rest in stage["instructions"]:
            text = f"{instruction} {rest}"
            assert not re.search(r"apt-get|apk |gcc|build-essential|g\+\+|make ", text), text
            if instruction == "COPY" and "--from=" in rest:
                source = re.search(r"--from=(\S+)", rest)
                assert source, text
                assert source[1] == "build", text
    (build,) = [s for s in stages if s["name"] == "build"]
    assert "--only-binary=:all:" in " ".join(rest for _, rest in build["instructions"])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_cmd_is_what_the_chart_runs(
    name: str, renders: dict[str, tuple[Rendered, Path]]
) -> None:
    stages = dockerfile_stages(DOCKERFILES[name])
    cmd = last_instruction(stage_chain(stages, len(stages) - 1), "CMD")
    assert cmd
    assert last_instruction(stage_chain(stages, len(stages) - 1), "ENTRYPOINT") is None
    rendered, _ = renders["default" if name != "replay-upstream" else "dev"]
    deployment, container = MAIN_CONTAINERS[name]
    c = rendered.container("Deployment", deployment, container)
    args = list(c["args"])
    if "--reload" in args:  # the dev set adds it
        args.remove("--reload")
    assert json.loads(cmd) == c["command"] + args


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything else (.venv, .git, .local) stays out"
    for dockerfile in DOCKERFILES.values():
        for instruction, rest in (
            i for s in dockerfile_stages(dockerfile) for i in s["instructions"]
        ):
            if instruction == "COPY" and "--from=" not in rest:
                source = rest.split()[0]
                assert (REPO / source).exists(), source
                assert any(
                    line.startswith("!") and source.startswith(line[1:].split("*")[0].rstrip("/"))
                    for line in lines
                ), f"{source} is not sent to the build"


def test_hadolint_passes() -> None:
    run([tool("hadolint"), "--config", REPO / "deploy" / "hadolint.yaml", *DOCKERFILES.values()])


# -- checkov ------------------------------------------------------------------------------------


def _checkov(args: list[str | Path]) -> tuple[int, list[dict[str, Any]], str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "BC_SKIP_MAPPING": "TRUE"}
    result = run([tool("checkov"), *args, "-o", "json"], check=False, env=env, cwd=REPO)
    reports: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    text, index = result.stdout, 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        value, index = decoder.raw_decode(text, index)
        reports += value if isinstance(value, list) else [value]
    return result.returncode, reports, result.stderr


def test_checkov_passes(renders: dict[str, tuple[Rendered, Path]], tmp_path: Path) -> None:
    """kubernetes (every render and deploy/k8s), helm (the chart) and dockerfile, with the
    skips of deploy/checkov.yaml; the dev set also skips CKV_K8S_22 (read-only root
    filesystem: skaffold syncs code into its api). Both runs at once: checkov is slow to start."""
    config = REPO / "deploy" / "checkov.yaml"
    scans = tmp_path / "renders"
    scans.mkdir()
    dev = tmp_path / "dev"
    dev.mkdir()
    for value_set, (_, path) in renders.items():
        shutil.copy(path, (dev if value_set == "dev" else scans) / path.name)
    skips = yaml.safe_load(config.read_text())["skip-check"]
    main: list[str | Path] = [
        "--config-file",
        config,
        "--framework",
        "kubernetes",
        "helm",
        "dockerfile",
        "-d",
        scans,
        "-d",
        K8S_DIR,
        "-d",
        CHART.parent,
        *[a for d in DOCKERFILES.values() for a in ("-d", d.parent)],
    ]
    dev_run: list[str | Path] = [
        "--config-file",
        config,
        "--framework",
        "kubernetes",
        "--skip-check",
        ",".join([*skips, "CKV_K8S_22"]),
        "-d",
        dev,
    ]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_checkov, [main, dev_run]))
    frameworks: set[str] = set()
    for returncode, reports, stderr in results:
        failures = [
            f"{r['check_type']}: {f['check_id']} {f['check_name']} {f['resource']} "
            f"({f['file_path']})"
            for r in reports
            for f in r["results"]["failed_checks"]
        ]
        assert not failures, "\n".join(failures)
        assert all(r["summary"]["parsing_errors"] == 0 for r in reports), reports
        assert returncode == 0, stderr[-3000:]
        frameworks |= {r["check_type"] for r in reports if r["summary"]["passed"]}
    assert frameworks == {"kubernetes", "helm", "dockerfile"}
