"""The release (.github/workflows/, `make sbom`, the README's quickstart), checked here.

- The workflows pass actionlint and zizmor (both pinned in requirements/deploy.txt); a workflow
  with a mistake fails each of them (seen failing here, every run).
- Every `run:` of the release workflow is `make <targets>` whose targets `make help` lists, so
  every step it takes runs on a developer's machine too; ci.yaml runs `.ci/run`. Actions are
  pinned by full commit SHA, every job names its permissions, no checkout keeps credentials.
- `make sbom` (real cyclonedx-py): one SBOM per image the chart names that is built here (the
  edge's exporter too); each Python image's lists exactly the pinned requirements its
  Dockerfile installs, the exporter's its base (the chart's Varnish image) and the Debian
  packages its Dockerfile pins; the exporter's Dockerfile defaults to the chart's Varnish image.
- The README's Kubernetes quickstart, as written: its make targets exist, `helm install`'s
  `--timeout` covers the chart's longest install hook, its `--set` values render, and the
  image references they produce are the ones `make image-archive` loads / `make push` pushes.
  There is no Kubernetes API server here: the commands that need a cluster (kind, k3d,
  minikube, `helm install`, `helm test`) are checked by rendering what they would install
  (`helm template` with the same flags), not run.

The push, chart push, signing and verification against a real OCI registry run in the
containers suite (tests/containers/test_release_push.py): they need the images.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    VENV_BIN,
    Rendered,
    built_images,
    helm_template,
    render,
    tool,
    values_file,
)
from support import REPO

WORKFLOWS = REPO / ".github" / "workflows"
RELEASE_WORKFLOW = WORKFLOWS / "release.yaml"
README = REPO / "README.md"
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def release_module() -> ModuleType:
    """deploy/tools/release.py (it imports build_images from its own folder)."""
    folder = str(REPO / "deploy" / "tools")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("release", REPO / "deploy/tools/release.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_targets() -> set[str]:
    """The targets `make help` lists."""
    out = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    targets = set(re.findall(r"^  make (\S+)", out, re.M))
    assert {"images", "push", "sign"} <= targets, out
    return targets


def workflows() -> dict[str, dict[str, Any]]:
    found = {path.name: yaml.safe_load(path.read_text()) for path in WORKFLOWS.glob("*.y*ml")}
    assert {"release.yaml", "ci.yaml"} <= set(found)
    return found


def lint(paths: list[Path]) -> tuple[subprocess.CompletedProcess[str], ...]:
    actionlint = subprocess.run(
        [tool("actionlint"), "-no-color", *paths], capture_output=True, text=True
    )
    zizmor = subprocess.run(
        [tool("zizmor"), "--offline", "--persona", "pedantic", "--no-progress", *paths],
        capture_output=True,
        text=True,
    )
    return actionlint, zizmor


def test_the_workflows_pass_actionlint_and_zizmor() -> None:
    actionlint, zizmor = lint(sorted(WORKFLOWS.glob("*.yaml")))
    assert actionlint.returncode == 0, actionlint.stdout + actionlint.stderr
    assert zizmor.returncode == 0, zizmor.stdout + zizmor.stderr


Breaker = Callable[[dict[str, Any]], object]
BROKEN: dict[str, tuple[str, Breaker, str]] = {
    # actionlint: a job that needs a job that does not exist
    "needs-a-missing-job": (
        "actionlint",
        lambda w: w["jobs"]["release"].__setitem__("needs", ["no-such-job"]),
        "no-such-job",
    ),
    # zizmor: a tag-pinned action
    "unpinned-action": (
        "zizmor",
        lambda w: w["jobs"]["release"]["steps"][0].__setitem__("uses", "actions/checkout@v4"),
        "unpinned-uses",
    ),
    # zizmor: a pull request title in a shell command
    "template-injection": (
        "zizmor",
        lambda w: w["jobs"]["release"]["steps"].append(
            {"run": "echo ${{ github.event.head_commit.message }}"}
        ),
        "template-injection",
    ),
    # zizmor: the checkout keeps the token in .git/config
    "persisted-credentials": (
        "zizmor",
        lambda w: w["jobs"]["release"]["steps"][0].pop("with"),
        "artipacked",
    ),
    # zizmor: write-all permissions
    "broad-permissions": (
        "zizmor",
        lambda w: w.__setitem__("permissions", "write-all"),
        "excessive-permissions",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_release_workflow_fails_the_linters(case: str, tmp_path: Path) -> None:
    linter, breaks, finding = BROKEN[case]
    workflow = yaml.safe_load(RELEASE_WORKFLOW.read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as true
    breaks(workflow)
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    broken = folder / "release.yaml"
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False).replace("'on':", "on:"))
    actionlint, zizmor = lint([broken])
    result = actionlint if linter == "actionlint" else zizmor
    assert result.returncode != 0, f"{linter} passed {case}"
    assert finding in result.stdout + result.stderr


def _make_argv(run: str) -> list[str]:
    argv = shlex.split(run)
    assert argv[0] == "make", f"not a make target: {run!r}"
    return argv[1:]


def test_every_release_step_is_a_make_target_that_runs_here() -> None:
    """The release workflow runs only `make <targets> [VAR=value]`, targets from `make help`:
    a developer runs the same steps (the containers suite runs push, chart-push, sign with a
    key, verify; this file runs sbom)."""
    known = make_targets()
    steps = workflows()["release.yaml"]["jobs"]["release"]["steps"]
    runs = [step["run"] for step in steps if "run" in step]
    targets = []
    for run in runs:
        for word in _make_argv(run):
            if "=" in word:
                assert re.fullmatch(r"[A-Z_]+=[\w.-]+", word), word
            else:
                assert word in known, f"{run!r}: {word} is not in make help"
                targets.append(word)
    for needed in ("images", "chart-package", "sbom", "push", "chart-push", "sign"):
        assert needed in targets, needed
    # the order a release needs: built and packaged before pushed, pushed before signed
    assert targets.index("images") < targets.index("push") < targets.index("sign")
    assert targets.index("chart-package") < targets.index("chart-push") < targets.index("sign")


def test_ci_workflow_runs_ci_run() -> None:
    steps = workflows()["ci.yaml"]["jobs"]["ci"]["steps"]
    runs = [step["run"] for step in steps if "run" in step]
    assert len(runs) == 1, runs
    assert runs[0].split()[-1] == ".ci/run", runs
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111


@pytest.mark.parametrize("name", ["release.yaml", "ci.yaml"])
def test_workflow_hygiene(name: str) -> None:
    """What zizmor checks, stated here too: actions pinned by commit, a `# vX` comment naming
    the release, permissions per job with none at the top, no persisted credentials."""
    text = (WORKFLOWS / name).read_text()
    workflow = workflows()[name]
    assert workflow["permissions"] == {}
    for job in workflow["jobs"].values():
        assert isinstance(job["permissions"], dict)
        assert job["permissions"]
        assert "write-all" not in str(job["permissions"])
        for step in job["steps"]:
            if "uses" not in step:
                continue
            assert SHA_PIN.match(step["uses"]), step["uses"]
            assert re.search(rf"{re.escape(step['uses'])} # v\d", text), step["uses"]
            if step["uses"].startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    # the OIDC token only where cosign signs keyless
    tokens = [job for job in workflow["jobs"].values() if "id-token" in job["permissions"]]
    assert len(tokens) == (1 if name == "release.yaml" else 0)


def test_loopback_registries_only_are_spoken_to_over_plain_http() -> None:
    release = release_module()
    for registry in ("127.0.0.1:5000/covid-stats", "localhost:5000", "localhost/x", "[::1]:5/x"):
        assert release.loopback(registry), registry
    for registry in ("ghcr.io/owner/covid-stats", "localhost.example.com/x", "127.0.0.2/x"):
        assert not release.loopback(registry), registry


def _pins(path: Path) -> set[tuple[str, str]]:
    pins = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins.add((re.sub(r"[-_.]+", "-", name).lower(), version))
    return pins


def _edge_varnish_image() -> str:
    """The Varnish image the chart's edge runs (its `varnish` container), as rendered."""
    rendered = render(values_file("edge"))
    (image,) = {
        c["image"]
        for doc in rendered.of_kind("Deployment")
        for c in rendered.pod_spec(doc)["containers"]
        if c["name"] == "varnish"
    }
    return str(image)


def _apt_pins(dockerfile: Path) -> set[tuple[str, str]]:
    """(package, version) of the Dockerfile's `apt-get install name=version[-*]` words."""
    text = dockerfile.read_text().replace("\\\n", " ")
    pins = set()
    for command in re.findall(r"apt-get install ([^&\n]*)", text):
        for word in command.split():
            if not word.startswith("-"):
                name, _, version = word.partition("=")
                pins.add((name, version.removesuffix("*").removesuffix("-")))
    return pins


def test_the_exporter_is_built_on_the_varnish_image_the_chart_runs() -> None:
    """The exporter's varnishstat must read the shared memory of the varnishd the chart runs:
    `make images` builds it on edgeCache.image as rendered (a bare name is Docker Hub's
    official image), and so does a plain build of its Dockerfile (its default BASE_IMAGE)."""
    release = release_module()
    varnish = _edge_varnish_image()
    qualified = varnish if "/" in varnish.split(":")[0] else f"docker.io/library/{varnish}"
    assert release.build_images.varnish_base() == qualified
    dockerfile = REPO / release.build_images.IMAGES[release.build_images.EXPORTER][0]
    assert f"ARG BASE_IMAGE={qualified}\n" in dockerfile.read_text()


def test_sbom_lists_exactly_what_each_image_installs(tmp_path: Path) -> None:
    """`make sbom` writes one CycloneDX JSON per image the chart names that is built here (read
    from the render, the exporter's included), the image as the subject: a Python image's
    components are the pinned requirements its Dockerfile installs (read from the
    Dockerfile), as pkg:pypi purls; the exporter's, the chart's Varnish image (pkg:docker) and
    the Debian packages its Dockerfile pins (pkg:deb)."""
    release = release_module()
    dist = tmp_path / "dist"
    env = {**os.environ, "RELEASE_DIST": str(dist)}
    result = subprocess.run(["make", "sbom"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {image.rsplit(":", 1)[0]: image.rsplit(":", 1)[1] for image in built_images()}
    written = {path.name.removesuffix(".cdx.json") for path in (dist / "sbom").iterdir()}
    assert written == set(expected), written ^ set(expected)
    blocks = {
        ref.rsplit(":", 1)[0]: block for block, ref in release.build_images.image_refs().items()
    }
    for repository, version in expected.items():
        document = json.loads((dist / "sbom" / f"{repository}.cdx.json").read_text())
        assert document["bomFormat"] == "CycloneDX"
        assert document["specVersion"] == "1.5"
        assert document["metadata"]["component"]["name"] == repository
        assert document["metadata"]["component"]["version"] == version
        block = blocks[repository]
        dockerfile = REPO / release.build_images.IMAGES[block][0]
        if block == release.build_images.EXPORTER:
            varnish = _edge_varnish_image()
            name, tag = varnish.rsplit(":", 1)
            purls = {c["purl"] for c in document["components"]}
            debs = {
                (c["name"], c["version"])
                for c in document["components"]
                if c["purl"].startswith("pkg:deb/debian/")
            }
            assert debs == _apt_pins(dockerfile), debs
            assert "prometheus-varnish-exporter" in {n for n, _ in debs}
            assert {p for p in purls if p.startswith("pkg:docker/")} == {
                f"pkg:docker/library/{name}@{tag}?repository_url=docker.io"
            }, purls
            assert len(purls) == len(debs) + 1, purls
            continue
        requirements = release.IMAGE_REQUIREMENTS[block]
        assert f"COPY {requirements} " in dockerfile.read_text(), dockerfile
        components = {
            (re.sub(r"[-_.]+", "-", c["name"]).lower(), c["version"])
            for c in document["components"]
        }
        for component in document["components"]:
            assert component["purl"].startswith("pkg:pypi/"), component
            assert component["purl"].endswith(f"@{component['version']}"), component
        pinned = _pins(REPO / requirements)
        if block == "replayUpstream":
            # starlette and uvicorn (its Dockerfile) and what they need, at dev.txt's pins
            assert components <= pinned
            assert {"starlette", "uvicorn"} <= {name for name, _ in components}
            assert len(components) < len(pinned)
        else:
            assert components == pinned, components ^ pinned


# ---- the README's Kubernetes quickstart -------------------------------------------------------


def quickstart_commands() -> list[list[str]]:
    """The shell commands of the README's Kubernetes quickstart, as written (comments and
    continuation lines joined)."""
    text = README.read_text()
    section = re.search(r"^## Kubernetes quickstart\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Kubernetes quickstart' section"
    blocks = re.findall(r"```sh\n(.*?)```", section.group(1), re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    assert commands
    return commands


def _longest_install_hook_seconds() -> int:
    """The longest a pre/post-install hook Job may run: its activeDeadlineSeconds, from the
    default render."""
    rendered = render()
    longest = 0
    for doc in rendered.docs:
        hooks = doc["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        if doc["kind"] == "Job" and "install" in hooks:
            longest = max(longest, int(doc["spec"]["activeDeadlineSeconds"]))
    assert longest > 0, "no install hook Job with a deadline"
    return longest


def _seconds(duration: str) -> int:
    total = 0
    for amount, unit in re.findall(r"(\d+)([hms])", duration):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    assert total, duration
    return total


def test_quickstart_make_targets_exist() -> None:
    known = make_targets()
    for argv in quickstart_commands():
        if argv[0] == "make":
            for word in argv[1:]:
                if "=" not in word:
                    assert word in known, f"make {word}: not in make help"


def _helm_installs() -> list[list[str]]:
    installs = [argv for argv in quickstart_commands() if argv[:2] == ["helm", "install"]]
    assert installs, "the quickstart has no helm install"
    return installs


def test_quickstart_helm_install_waits_longer_than_the_longest_install_hook() -> None:
    """Helm's default --timeout (5 min) is shorter than the migration hook may take: the
    quickstart's install sets one at least as long as the longest install hook's deadline."""
    longest = _longest_install_hook_seconds()
    for argv in _helm_installs():
        assert "--wait" in argv, argv
        timeout = argv[argv.index("--timeout") + 1]
        assert _seconds(timeout) >= longest, f"--timeout {timeout} < {longest} s"


def _set_flags(argv: list[str]) -> list[str]:
    flags = []
    for index, word in enumerate(argv):
        if word in ("--set", "--set-string"):
            flags += [word, argv[index + 1]]
    return flags


def _our_images(rendered: Any) -> set[str]:
    images = set()
    for doc in rendered.docs:
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") or (spec if doc["kind"] == "Pod" else {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            if "covid-stats-" in container["image"]:
                images.add(container["image"])
    return images


def test_quickstart_installs_the_images_it_loads_or_pushes() -> None:
    """Each `helm install` of the quickstart, rendered with its --set flags, runs exactly the
    images the quickstart's previous steps put where the cluster finds them: with
    `global.imageRegistry=localhost`, the names in `make image-archive`'s archive
    (localhost/<repository>:<tag>, what kind, k3d and minikube load); with a registry, the
    references `make push REGISTRY=...` pushes. Derived from release.py, never copied; and
    what release.py archives and pushes is every image the chart names that is built here
    (built_images: the render with every workload on, the edge's exporter included)."""
    release = release_module()
    refs = release.build_images.image_refs()
    loaded = {f"localhost/{ref}" for ref in refs.values()}
    assert loaded == built_images("localhost"), loaded ^ built_images("localhost")
    for argv in _helm_installs():
        assert argv[2:4] == ["covid-stats", "deploy/helm/covid-stats"], argv
        flags = _set_flags(argv)
        rendered = Rendered(helm_template(extra=flags).stdout)
        images = _our_images(rendered)
        registry = next(
            (f.split("=", 1)[1] for f in flags if f.startswith("global.imageRegistry=")), ""
        )
        if registry == "localhost":
            expected = loaded
        else:
            expected = {remote for _, remote in release.image_targets(registry, None).values()}
            assert expected == built_images(registry), expected ^ built_images(registry)
        # the api and the fetcher; the replay upstream too with the README's
        # `--set replayUpstream.enabled=true` (a cluster without internet), the exporter with
        # the edge cache (docs/edge-cache.md)
        assert images <= expected, (images, expected)
        assert len(images) == len(expected) - 2, images
        with_all = [
            *flags,
            *("--set", "replayUpstream.enabled=true", "--set", "edgeCache.enabled=true"),
        ]
        assert "replayUpstream.enabled=true" in README.read_text()
        assert _our_images(Rendered(helm_template(extra=with_all).stdout)) == expected


def test_quickstart_loads_what_image_archive_writes() -> None:
    """The archive the quickstart loads into kind/k3d/minikube is `make image-archive`'s."""
    commands = quickstart_commands()
    archive = "dist/covid-stats-images.tar"
    assert ["make", "image-archive"] in commands
    loaders = {
        ("kind", "load", "image-archive"),
        ("k3d", "image", "import"),
        ("minikube", "image", "load"),
    }
    found = {tuple(argv[:3]) for argv in commands if archive in argv}
    assert loaders <= found, found
    assert f'"{archive.split("/")[-1]}"' in (REPO / "deploy/tools/release.py").read_text()


def test_quickstart_helm_test_names_the_installed_release() -> None:
    commands = quickstart_commands()
    tests = [argv for argv in commands if argv[:2] == ["helm", "test"]]
    assert tests
    assert all(argv[2] == "covid-stats" for argv in tests)


def test_quickstart_values_render_through_the_schema() -> None:
    """The flags render (the values schema checks them), and a misspelt one (the README's
    replayUpstream.enabled) fails here as it would at install."""
    for argv in _helm_installs():
        helm_template(extra=_set_flags(argv))
    bad = subprocess.run(
        [VENV_BIN / "helm", "template", "x", CHART, "--set", "replayUpstream.enable=true"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_keyless_sign_runs_cosign_on_every_pushed_digest(tmp_path: Path) -> None:
    """`make sign SIGNER=keyless`, the release workflow's signing step. cosign and GitHub's
    OIDC token exist only in the workflow, so here a stand-in `cosign` on PATH records its
    arguments (a stand-in for what cannot run here, and only for that): every pushed image and
    the chart signed by the digest `make push` / `make chart-push` recorded, each image's own
    SBOM attested to it as CycloneDX, the chart archive and SBOMs signed as blobs."""
    release = release_module()
    registry = "ghcr.io/owner/covid-stats"
    dist = tmp_path / "dist"
    (dist / "sbom").mkdir(parents=True)
    (dist / "release").mkdir()
    name, version = release.chart_meta()
    (dist / f"{name}-{version}.tgz").write_bytes(b"chart")
    pushed = {}
    for index, (block, (_, remote)) in enumerate(release.image_targets(registry, None).items()):
        pushed[remote] = f"sha256:{index:064x}"
        repository = release.build_images.image_refs()[block].rsplit(":", 1)[0]
        (dist / "sbom" / f"{repository}.cdx.json").write_text("{}")
    chart = f"{registry}/{name}:{version}"
    pushed[chart] = f"sha256:{'c' * 64}"
    (dist / "release" / "pushed.json").write_text(json.dumps(pushed))
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    calls = tmp_path / "calls.jsonl"
    (stand_in / "cosign").write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    (stand_in / "cosign").chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in}:{os.environ['PATH']}", "RELEASE_DIST": str(dist)}
    result = subprocess.run(
        ["make", "sign", "SIGNER=keyless", "REGISTRY=ghcr.io/Owner/covid-stats"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    signed = {argv[-1] for argv in argvs if argv[:2] == ["sign", "--yes"]}
    assert signed == {f"{ref.rsplit(':', 1)[0]}@{digest}" for ref, digest in pushed.items()}
    attested = {
        argv[-1]: argv[argv.index("--predicate") + 1] for argv in argvs if argv[0] == "attest"
    }
    for block, (_, remote) in release.image_targets(registry, None).items():
        repository = release.build_images.image_refs()[block].rsplit(":", 1)[0]
        subject = f"{remote.rsplit(':', 1)[0]}@{pushed[remote]}"
        assert attested[subject] == str(dist / "sbom" / f"{repository}.cdx.json")
    for argv in argvs:
        if argv[0] == "attest":
            assert argv[argv.index("--type") + 1] == "cyclonedx"
    # every image the chart names that is built here (read from the render), signed and attested
    built = {ref.rsplit(":", 1)[0] for ref in built_images(registry)}
    assert built <= {subject.split("@")[0] for subject in signed}, built
    assert built == {subject.split("@")[0] for subject in attested}, built
    blobs = {argv[-1] for argv in argvs if argv[0] == "sign-blob"}
    assert blobs == {
        str(path) for path in [*(dist / "sbom").glob("*"), dist / f"{name}-{version}.tgz"]
    }


@pytest.mark.parametrize("target", ["push", "chart-push"])
def test_a_tag_that_is_not_the_chart_version_pushes_nothing(target: str) -> None:
    """On a pushed tag the workflow publishes what Chart.yaml names: a tag v<other> stops
    `make push` and `make chart-push` before anything is pushed (no registry answers at the
    REGISTRY given: a push attempt would fail differently)."""
    _, version = release_module().chart_meta()
    env = {**os.environ, "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": f"v{version}.1"}
    result = subprocess.run(
        ["make", "--no-print-directory", target, "REGISTRY=127.0.0.1:9/none"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"the tag 'v{version}.1' is not v{version}" in result.stderr, result.stderr
