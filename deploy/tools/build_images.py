"""Build the three images the chart runs (`make images`), tagged as the chart expects them.

    python deploy/tools/build_images.py [--engine podman|docker] [--base IMAGE] [--stand-in]

- Names: the repositories of values.yaml (api, statsFetcher, replayUpstream), tag = the
  chart's appVersion: `helm install` with the chart's defaults runs exactly these images.
- Engine: podman (with deploy/containers/containers.conf through CONTAINERS_CONF), or docker
  where it is what the machine has (a running engine).
- Base: the Dockerfiles' BASE_IMAGE default, the official Python image, pinned. Where it cannot
  be had (no registry reachable, as on CI machines here), a local stand-in is used and the
  script says so: Debian bookworm's python3 from `debootstrap --variant=minbase`, imported as
  localhost/covid-stats-base:bookworm, trusting this machine's CA bundle (package downloads go
  through a TLS-intercepting proxy there). It is built once and reused. Never for production.
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

# values.yaml block -> (Dockerfile, build target or None for the last stage)
IMAGES = {
    "api": ("services/api/Dockerfile", "runtime"),
    "statsFetcher": ("services/stats-fetcher/Dockerfile", None),
    "replayUpstream": ("tools/replay-upstream/Dockerfile", None),
}


def say(message: str) -> None:
    print(f"images: {message}", flush=True)


def chart_scalar(path: Path, pattern: str) -> str:
    """A scalar of the chart's YAML files, by a regex with one group (no YAML parser here)."""
    match = re.search(pattern, path.read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"images: {pattern!r} not found in {path}")
    return match.group(1)


def image_refs() -> dict[str, str]:
    """{values block: repository:appVersion}, read from the chart."""
    version = chart_scalar(CHART / "Chart.yaml", r'^appVersion:\s*"?([^"\s]+)"?')
    values = (CHART / "values.yaml").read_text()
    refs = {}
    for block in IMAGES:
        section = re.search(
            # the block, its image, then any keys and comments before repository
            rf"^{block}:\n(?:[ #].*\n|\n)*?  image:\n"
            rf"(?:    (?!repository:).*\n)*?    repository: (\S+)",
            values,
            re.M,
        )
        if not section:
            raise SystemExit(f"images: {block}.image.repository not found in values.yaml")
        refs[block] = f"{section.group(1)}:{version}"
    return refs


def default_base() -> str:
    bases = {
        chart_scalar(REPO / dockerfile, r"^ARG BASE_IMAGE=(\S+)")
        for dockerfile, _ in IMAGES.values()
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
    build_args = {"BASE_IMAGE": base, **labels()}
    results = []
    for block, ref in image_refs().items():
        dockerfile, target = IMAGES[block]
        argv = ["build", "-f", dockerfile, "-t", ref]
        if target:
            argv += ["--target", target]
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        say(f"building {ref} from {dockerfile} on {base}")
        started = time.monotonic()
        result = engine.run(*argv, ".", cwd=REPO)
        if result.returncode != 0:
            say(f"building {ref} failed ({engine.name} exited {result.returncode})")
            return 1
        results.append((ref, engine.size(ref), time.monotonic() - started))
    for ref, size, seconds in results:
        say(f"{ref}: {size / 1e6:.0f} MB, built in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
