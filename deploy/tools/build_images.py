"""Build the images the chart runs (`make images`), tagged as the chart renders them.

    python deploy/tools/build_images.py [--engine podman|docker] [--base IMAGE] [--stand-in]

- Images: the api, the fetcher and the replay upstream (Python, from the repository root) and
  the edge cache's metrics sidecar (edgeCache.metrics.image: deploy/varnish/exporter.Dockerfile
  on the chart's Varnish image, edgeCache.image, so varnishstat matches varnishd).
- Names: each block's repository and tag in values.yaml, as the chart renders them (an empty
  tag: the chart's appVersion; the exporter's: edgeCache.image.tag): `helm install` with the
  chart's defaults (and edgeCache.enabled) runs exactly these images.
- Engine: podman (with deploy/containers/containers.conf through CONTAINERS_CONF), or docker
  where it is what the machine has (a running engine).
- Base: the Dockerfiles' BASE_IMAGE default, the official Python image, pinned. Where it cannot
  be had (no registry reachable, as on CI machines here), a local stand-in is used and the
  script says so: Debian bookworm's python3 from `debootstrap --variant=minbase`, imported as
  localhost/covid-stats-base:bookworm, trusting this machine's CA bundle (package downloads go
  through a TLS-intercepting proxy there). It is built once and reused. Never for production.
- The exporter's base: the chart's Varnish image (edgeCache.image, from Docker Hub). Where it
  cannot be pulled, the containers suite's Varnish stand-in (tests/containers/edge/Containerfile:
  Debian's varnish, varnish-modules and prometheus-varnish-exporter) is built on the stand-in
  Debian base above (so it trusts the same CA bundle) as localhost/covid-stats-varnish-stand-in
  and used instead, said so. Built once and reused; never for production.
- OCI labels: version (appVersion), revision (git commit, "-dirty" with local changes),
  created (now, RFC 3339), source (the git remote, when there is one).

Prints each image's size and build time. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "covid-stats"
CONTAINERS_CONF = REPO / "deploy" / "containers" / "containers.conf"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STAND_IN = "localhost/covid-stats-base:bookworm"
STAND_IN_ROOTFS = REPO / ".local" / "images" / "base-rootfs"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The official Varnish image's stand-in (the containers suite's, tests/containers/edge.py)
VARNISH_STAND_IN = "localhost/covid-stats-varnish-stand-in:bookworm"
VARNISH_STAND_IN_FILE = REPO / "tests" / "containers" / "edge" / "Containerfile"
# Docker Hub's official images: what a bare repository name (no registry) means to a cluster
DOCKER_HUB_LIBRARY = "docker.io/library"

# values.yaml block -> (Dockerfile, build target or None for the last stage, build context)
IMAGES = {
    "api": ("services/api/Dockerfile", "runtime", "."),
    "statsFetcher": ("services/stats-fetcher/Dockerfile", None, "."),
    "replayUpstream": ("tools/replay-upstream/Dockerfile", None, "."),
    "edgeCache.metrics": ("deploy/varnish/exporter.Dockerfile", None, "deploy/varnish"),
}
# The images on the Python base (the Dockerfiles' BASE_IMAGE, or the stand-in Debian base);
# the exporter's base is the chart's Varnish image (edgeCache.image).
EXPORTER = "edgeCache.metrics"
PYTHON_IMAGES = tuple(block for block in IMAGES if block != EXPORTER)


def say(message: str) -> None:
    print(f"images: {message}", flush=True)


def chart_scalar(path: Path, pattern: str) -> str:
    """A scalar of the chart's YAML files, by a regex with one group (no YAML parser here)."""
    match = re.search(pattern, path.read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"images: {pattern!r} not found in {path}")
    return match.group(1)


def values_scalar(text: str, path: str) -> str:
    """The scalar at ``path`` ("edgeCache.metrics.image.tag") of values.yaml's ``text``, which
    nests by two spaces (no YAML parser here): "" for an empty or quoted-empty one."""
    lines = text.splitlines()
    start, indent = 0, 0
    keys = path.split(".")
    for depth, key in enumerate(keys):
        for index in range(start, len(lines)):
            line = lines[index]
            stripped = line.lstrip(" ")
            if not stripped or stripped.startswith("#"):
                continue
            if len(line) - len(stripped) < indent:
                break  # past the parent block
            if len(line) - len(stripped) == indent and stripped.startswith(f"{key}:"):
                start, indent = index + 1, indent + 2
                if depth == len(keys) - 1:
                    value = stripped[len(key) + 1 :].split(" #")[0].strip()
                    return value.strip("\"'")
                break
        else:
            raise SystemExit(f"images: {path} not found in values.yaml")
        if indent != 2 * (depth + 1):
            raise SystemExit(f"images: {path} not found in values.yaml")
    raise SystemExit(f"images: {path} not found in values.yaml")


def app_version() -> str:
    return chart_scalar(CHART / "Chart.yaml", r'^appVersion:\s*"?([^"\s]+)"?')


def _image_ref(values: str, block: str, default_tag: str) -> str:
    """<repository>:<tag> of ``block``.image, as the chart's "covid-stats.image" renders it
    without a registry."""
    repository = values_scalar(values, f"{block}.image.repository")
    return f"{repository}:{values_scalar(values, f'{block}.image.tag') or default_tag}"


def image_refs() -> dict[str, str]:
    """{values block: repository:tag} of the images `make images` builds, read from the chart:
    the Python images' tag defaults to appVersion, the exporter's to edgeCache.image.tag
    ("covid-stats.edgeCache.exporterImage")."""
    version = app_version()
    values = (CHART / "values.yaml").read_text()
    refs = {block: _image_ref(values, block, version) for block in PYTHON_IMAGES}
    edge_tag = values_scalar(values, "edgeCache.image.tag") or version
    refs[EXPORTER] = _image_ref(values, EXPORTER, edge_tag)
    return refs


def varnish_base() -> str:
    """The chart's Varnish image (edgeCache.image), fully qualified for a pull: a bare
    repository is Docker Hub's official one, as a cluster reads it."""
    values = (CHART / "values.yaml").read_text()
    ref = _image_ref(values, "edgeCache", app_version())
    registry = values_scalar(values, "edgeCache.image.registry")
    if registry:
        return f"{registry}/{ref}"
    return ref if "/" in ref.split(":")[0] else f"{DOCKER_HUB_LIBRARY}/{ref}"


def default_base() -> str:
    bases = {
        chart_scalar(REPO / IMAGES[block][0], r"^ARG BASE_IMAGE=(\S+)") for block in PYTHON_IMAGES
    }
    if len(bases) != 1:
        raise SystemExit(f"images: the Dockerfiles disagree on BASE_IMAGE: {sorted(bases)}")
    return bases.pop()


class Engine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.env = dict(os.environ)
        if name == "podman":
            self.env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)

    def run(
        self, *args: str, timeout: float | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *args],
            env=self.env,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )

    def has(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, capture_output=True).returncode == 0

    def size(self, ref: str) -> int:
        out = self.run("image", "inspect", ref, capture_output=True).stdout
        return int(json.loads(out)[0]["Size"])


def pick_engine(wanted: str | None) -> Engine:
    if wanted:
        return Engine(wanted)
    if shutil.which("podman"):
        return Engine("podman")
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    ):
        return Engine("docker")
    raise SystemExit(
        "images: no container engine: install podman (.ci/install-tools does) or run Docker"
    )


def pullable(engine: Engine, ref: str) -> bool:
    if engine.has(ref):
        return True
    say(f"pulling {ref} ...")
    try:
        result = engine.run("pull", ref, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def build_stand_in(engine: Engine) -> None:
    """Debian bookworm minbase + python3 + python3-venv, this machine's CA bundle trusted
    (also by pip, which does not read the system store), imported as STAND_IN."""
    if engine.has(STAND_IN):
        say(f"stand-in base {STAND_IN} present: reused")
        return
    if shutil.which("debootstrap") is None:
        raise SystemExit(
            "images: the stand-in base needs debootstrap (.ci/install-tools installs it)"
        )
    started = time.monotonic()
    say(f"building the stand-in base {STAND_IN} with debootstrap (a few minutes, once)")
    if STAND_IN_ROOTFS.exists():
        shutil.rmtree(STAND_IN_ROOTFS)
    STAND_IN_ROOTFS.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(STAND_IN_ROOTFS),
            DEBIAN_MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rootfs = STAND_IN_ROOTFS
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / cache).glob("*"):
            if path.is_file():
                path.unlink()
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        f"ENV PIP_CERT={bundle}",
        f"ENV SSL_CERT_FILE={bundle}",
        'CMD ["python3"]',
    ]
    with tempfile.TemporaryFile() as tar:
        subprocess.run(["tar", "-C", str(rootfs), "-c", "."], stdout=tar, check=True)
        tar.seek(0)
        args = [arg for change in changes for arg in ("--change", change)]
        result = engine.run("import", *args, "-", STAND_IN, stdin=tar, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"images: importing the stand-in base failed:\n{result.stderr}")
    shutil.rmtree(rootfs)
    say(
        f"stand-in base {STAND_IN}: {engine.size(STAND_IN) / 1e6:.0f} MB, built in "
        f"{time.monotonic() - started:.0f} s"
    )


def build_varnish_stand_in(engine: Engine) -> None:
    """The containers suite's Varnish stand-in (VARNISH_STAND_IN_FILE) on the stand-in Debian
    base, which trusts this machine's CA bundle; imported as VARNISH_STAND_IN."""
    if engine.has(VARNISH_STAND_IN):
        say(f"stand-in Varnish {VARNISH_STAND_IN} present: reused")
        return
    build_stand_in(engine)
    started = time.monotonic()
    say(f"building the stand-in Varnish {VARNISH_STAND_IN} from {VARNISH_STAND_IN_FILE.name}")
    result = engine.run(
        *("build", "-f", str(VARNISH_STAND_IN_FILE), "--build-arg", f"BASE_IMAGE={STAND_IN}"),
        *("-t", VARNISH_STAND_IN, str(VARNISH_STAND_IN_FILE.parent)),
        cwd=REPO,
    )
    if result.returncode != 0:
        raise SystemExit(f"images: building {VARNISH_STAND_IN} failed")
    say(
        f"stand-in Varnish {VARNISH_STAND_IN}: {engine.size(VARNISH_STAND_IN) / 1e6:.0f} MB, "
        f"built in {time.monotonic() - started:.0f} s"
    )


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def labels() -> dict[str, str]:
    revision = git("rev-parse", "HEAD") or "unknown"
    if revision != "unknown" and git("status", "--porcelain", "--untracked-files=no"):
        revision += "-dirty"
    return {
        "VERSION": chart_scalar(CHART / "Chart.yaml", r'^appVersion:\s*"?([^"\s]+)"?'),
        "REVISION": revision,
        "CREATED": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "SOURCE": git("config", "--get", "remote.origin.url") or "unknown",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engine", choices=["podman", "docker"], help="default: podman, else docker"
    )
    parser.add_argument(
        "--base", help="BASE_IMAGE (default: the Dockerfiles' official Python image)"
    )
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="use the local stand-in base without trying a registry",
    )
    options = parser.parse_args()
    engine = pick_engine(options.engine)
    base = options.base or default_base()
    if options.stand_in or (not options.base and not pullable(engine, base)):
        say(
            f"{base} cannot be pulled here (no registry reachable): building on the local "
            f"stand-in {STAND_IN} (Debian bookworm's python3) instead. Fine for tests on this "
            "machine; production images use the official base (make images where a registry "
            "answers, or BASE_IMAGE=...)"
        )
        build_stand_in(engine)
        base = STAND_IN
    refs = image_refs()
    varnish = varnish_base()
    if options.stand_in or not pullable(engine, varnish):
        say(
            f"{varnish} cannot be pulled here (no registry reachable): the exporter is built "
            f"on the local stand-in {VARNISH_STAND_IN} (Debian bookworm's varnish) instead. "
            "Fine for tests on this machine; production images use the official Varnish "
            "image (make images where a registry answers)"
        )
        build_varnish_stand_in(engine)
        varnish = VARNISH_STAND_IN
    bases = {**dict.fromkeys(PYTHON_IMAGES, base), EXPORTER: varnish}
    oci_labels = labels()
    results = []
    for block, ref in refs.items():
        dockerfile, target, context = IMAGES[block]
        argv = ["build", "-f", dockerfile, "-t", ref]
        if target:
            argv += ["--target", target]
        # VERSION: the image's tag (the Python images': appVersion)
        build_args = {"BASE_IMAGE": bases[block], **oci_labels, "VERSION": ref.rpartition(":")[2]}
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        say(f"building {ref} from {dockerfile} on {bases[block]}")
        started = time.monotonic()
        result = engine.run(*argv, context, cwd=REPO)
        if result.returncode != 0:
            say(f"building {ref} failed ({engine.name} exited {result.returncode})")
            return 1
        results.append((ref, engine.size(ref), time.monotonic() - started))
    for ref, size, seconds in results:
        say(f"{ref}: {size / 1e6:.0f} MB, built in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
