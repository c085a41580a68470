"""The release targets against a real OCI registry: `make push`, `make chart-push`, `make sign`
and `make verify`, as .github/workflows/release.yaml runs them (its keyless signing aside).

The registry is Debian's `docker-registry` (the CNCF distribution registry, v2.8; installed by
.ci/install-tools) on 127.0.0.1 and a free port, spoken to over plain HTTP because it is on
loopback. The images are the ones `make images` built (`make test-containers` builds them
first). Every expected name and digest is read from what was built, pushed or packaged:

- each pushed image is in the registry under REGISTRY/<repository>:<appVersion>, its manifest
  the digest `make push` recorded, its config the image podman built;
- the chart pulled back from oci://REGISTRY with `helm pull` is byte for byte the package;
- after `make sign` with a key from `make signing-key`, `make verify` passes, and fails with
  another public key and with an SBOM changed by one byte.
- `make image-archive` holds the images under the names the quickstart installs;
- what is pushed, signed, given an SBOM and archived is every image the chart names that is
  built here, read from the chart's render with every workload on (the edge cache's exporter
  sidecar included: `deploy_support.built_images`), not from deploy/tools/;
- `make registry-login` against a registry asking for basic auth (htpasswd): logged in with
  the password, refused without it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy_support import built_images
from devstack.procs import free_port, wait_until
from support import REPO, Process, spawn

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

# deploy/tools/release.py and build_images.py (the names `make images` gives, what release.py
# pushed and signs), imported from their folder
sys.path.insert(0, str(REPO / "deploy" / "tools"))
build_images: Any = importlib.import_module("build_images")

DIST = REPO / "dist"
PUSHED = DIST / "release" / "pushed.json"


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True
    )


def must(*args: str) -> str:
    result = make(*args)
    assert result.returncode == 0, f"make {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@contextlib.contextmanager
def running_registry(folder: Path, htpasswd: Path | None = None) -> Iterator[str]:
    """A docker-registry on 127.0.0.1:<free port> (basic auth with ``htpasswd``); its
    host:port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed: run .ci/install-tools (as root)")
    port = free_port()
    config = folder / "config.yml"
    auth = f"auth: {{htpasswd: {{realm: covid-stats, path: {htpasswd}}}}}\n" if htpasswd else ""
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n" + auth
    )
    process: Process = spawn("docker-registry", [binary, "serve", str(config)], os.environ, folder)

    def answers() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"docker-registry exited:\n{process.output()}")
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code
        except httpx.TransportError:
            return False
        return status == (401 if htpasswd else 200)

    wait_until(answers, timeout=30, what="docker-registry answering /v2/")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REGISTRY for the make targets: a path on a registry without authentication."""
    with running_registry(tmp_path_factory.mktemp("registry")) as host:
        yield f"{host}/covid-stats-release-test"


def api(registry: str, path: str, accept: str = "") -> httpx.Response:
    host, _, prefix = registry.partition("/")
    headers = {"Accept": accept} if accept else {}
    return httpx.get(f"http://{host}/v2/{prefix}/{path}", headers=headers, timeout=30)


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFESTS = f"{OCI_MANIFEST},application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def published(registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """make push, chart-package, chart-push, sbom, signing-key, sign: what was pushed."""
    engine = build_images.pick_engine(None)
    for ref in built_images():
        assert engine.has(ref), f"no image {ref}: make images (make test-containers does)"
    PUSHED.unlink(missing_ok=True)
    must("push", f"REGISTRY={registry}")
    must("chart-package")
    must("chart-push", f"REGISTRY={registry}")
    shutil.rmtree(DIST / "sbom", ignore_errors=True)  # only this run's SBOMs
    must("sbom")
    keys = tmp_path_factory.mktemp("signing")
    must("signing-key", f"SIGNING_DIR={keys}")
    must("sign", f"REGISTRY={registry}", f"SIGNING_DIR={keys}")
    return {"pushed": json.loads(PUSHED.read_text()), "keys": keys, "engine": engine}


def test_push_puts_the_built_images_under_the_registry(
    registry: str, published: dict[str, Any]
) -> None:
    """Every image the chart names with global.imageRegistry=REGISTRY (edge cache on) that is
    built here is in the registry, the image podman built."""
    pushed, engine = published["pushed"], published["engine"]
    remotes = built_images(registry)
    assert any("varnish-exporter" in remote for remote in remotes), remotes
    for remote in remotes:
        ref = remote.removeprefix(f"{registry}/")
        repository, tag = ref.rsplit(":", 1)
        assert remote in pushed, (remote, pushed)
        answer = api(registry, f"{repository}/manifests/{tag}", MANIFESTS)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Docker-Content-Digest"] == pushed[remote]
        # the config the registry holds is the image podman built
        image_id = engine.run("image", "inspect", "--format", "{{.Id}}", ref, capture_output=True)
        assert answer.json()["config"]["digest"] == f"sha256:{image_id.stdout.strip()}"


def test_chart_push_puts_the_package_in_the_registry(
    registry: str, published: dict[str, Any], tmp_path: Path
) -> None:
    release = _release()
    name, version = release.chart_meta()
    ref = f"{registry}/{name}:{version}"
    assert ref in published["pushed"]
    manifest = api(registry, f"{name}/manifests/{version}", OCI_MANIFEST)
    assert manifest.headers["Docker-Content-Digest"] == published["pushed"][ref]
    assert manifest.json()["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    pulled = subprocess.run(
        [
            REPO / ".venv" / "bin" / "helm",
            "pull",
            f"oci://{registry}/{name}",
            "--version",
            version,
            "--plain-http",
            "--destination",
            tmp_path,
        ],
        capture_output=True,
        text=True,
    )
    assert pulled.returncode == 0, pulled.stderr
    package = f"{name}-{version}.tgz"
    assert (tmp_path / package).read_bytes() == (DIST / package).read_bytes()


def test_sign_stores_a_signature_per_image_and_chart_and_verify_checks_them(
    registry: str, published: dict[str, Any]
) -> None:
    assert built_images(registry) <= set(published["pushed"]), published["pushed"]
    for ref, digest in published["pushed"].items():
        repository = ref.removeprefix(f"{registry}/").rsplit(":", 1)[0]
        tags = api(registry, f"{repository}/tags/list").json()["tags"]
        assert f"{digest.replace(':', '-')}.sig" in tags, (ref, tags)
    blobs = _release().blobs_to_sign()
    for blob in blobs:
        assert Path(f"{blob}.sig").is_file(), blob
    # an SBOM of each built image, signed
    for ref in built_images():
        assert DIST / "sbom" / f"{ref.rsplit(':', 1)[0]}.cdx.json" in blobs, (ref, blobs)
    verified = must("verify", f"REGISTRY={registry}", f"SIGNING_DIR={published['keys']}")
    assert verified.count("release: verified ") == len(published["pushed"]) + len(
        _release().blobs_to_sign()
    ), verified


def test_verify_fails_with_another_key(
    registry: str, published: dict[str, Any], tmp_path: Path
) -> None:
    must("signing-key", f"SIGNING_DIR={tmp_path}")
    result = make("verify", f"REGISTRY={registry}", f"PUBLIC_KEY={tmp_path}/cosign.pub")
    assert result.returncode != 0
    # the first image's signature is refused (images are checked before the blobs)
    first = next(iter(build_images.image_refs().values()))
    assert f"{registry}/{first}@sha256:" in result.stderr, result.stderr
    assert "no signature by" in result.stderr, result.stderr


def test_verify_fails_for_a_changed_sbom(registry: str, published: dict[str, Any]) -> None:
    sbom = next((DIST / "sbom").glob("*.cdx.json"))
    original = sbom.read_bytes()
    try:
        sbom.write_bytes(original + b" ")
        result = make("verify", f"REGISTRY={registry}", f"SIGNING_DIR={published['keys']}")
        assert result.returncode != 0
        assert f"{sbom.name}: no valid signature" in result.stdout + result.stderr
    finally:
        sbom.write_bytes(original)


def test_the_debian_packages_an_sbom_lists_are_in_its_image(published: dict[str, Any]) -> None:
    """The exporter's SBOM lists the Debian packages its Dockerfile pins (pkg:deb); the image
    `make images` built holds each at that version (any Debian revision of it), by dpkg."""
    engine = published["engine"]
    checked = 0
    for ref in built_images():
        document = json.loads((DIST / "sbom" / f"{ref.rsplit(':', 1)[0]}.cdx.json").read_text())
        for component in document["components"]:
            if not component["purl"].startswith("pkg:deb/"):
                continue
            result = engine.run(
                *("run", "--rm", "--entrypoint", "dpkg-query", ref),
                *("-W", "-f", "${Version}", component["name"]),
                capture_output=True,
            )
            assert result.returncode == 0, (ref, component["name"], result.stderr)
            installed = result.stdout.strip()
            assert installed == component["version"] or installed.startswith(
                f"{component['version']}-"
            ), (ref, component, installed)
            checked += 1
    assert checked, "no SBOM lists a Debian package (the exporter's should)"


def _release() -> Any:
    return importlib.import_module("release")


def test_image_archive_holds_the_images_the_quickstart_installs() -> None:
    """`make image-archive` (what the README's quickstart loads into kind, k3d, minikube): one
    docker-archive whose images are named localhost/<repository>:<tag>, the names the chart
    renders with `global.imageRegistry=localhost` (tests/deploy/test_release.py checks the
    render), each the image podman built."""
    import tarfile

    must("image-archive")
    archive = DIST / "covid-stats-images.tar"
    engine = build_images.pick_engine(None)
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest = json.load(member)
        tags = {tag: entry["Config"] for entry in manifest for tag in entry["RepoTags"]}
        refs = build_images.image_refs().values()
        assert set(tags) == {f"localhost/{ref}" for ref in refs}
        assert set(tags) == built_images("localhost"), set(tags) ^ built_images("localhost")
        for ref in refs:
            image_id = engine.run(
                "image", "inspect", "--format", "{{.Id}}", ref, capture_output=True
            ).stdout.strip()
            assert image_id in tags[f"localhost/{ref}"], (ref, tags)
    finally:
        archive.unlink(missing_ok=True)


def test_registry_login_logs_podman_and_helm_in(tmp_path: Path) -> None:
    """`make registry-login` (the release workflow's login step) against a registry asking
    for basic auth (htpasswd, bcrypt): podman and helm record the host; a wrong password is
    refused. The auth files are this test's own (REGISTRY_AUTH_FILE, HELM_REGISTRY_CONFIG)."""
    password = secrets.token_urlsafe(16)
    hashed = subprocess.run(
        [
            REPO / ".venv" / "deploy" / "bin" / "python",
            "-c",
            "import bcrypt, sys\n"
            "print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())",
            password,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"release:{hashed}\n")
    auth_file = tmp_path / "auth.json"
    helm_config = tmp_path / "helm" / "config.json"
    with running_registry(tmp_path, htpasswd) as host:

        def login(secret: str) -> subprocess.CompletedProcess[str]:
            env = {
                **os.environ,
                "REGISTRY_AUTH_FILE": str(auth_file),
                "HELM_REGISTRY_CONFIG": str(helm_config),
                "REGISTRY_USERNAME": "release",
                "REGISTRY_PASSWORD": secret,
            }
            return subprocess.run(
                ["make", "--no-print-directory", "registry-login", f"REGISTRY={host}/team"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )

        refused = login(password + "x")
        assert refused.returncode != 0
        assert not auth_file.exists() or host not in json.loads(auth_file.read_text())["auths"]
        accepted = login(password)
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert password not in accepted.stdout + accepted.stderr
    assert host in json.loads(auth_file.read_text())["auths"]
    assert host in json.loads(helm_config.read_text())["auths"]
