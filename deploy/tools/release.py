"""Publish a release: the images and the chart to an OCI registry, their SBOMs, signatures.

    python deploy/tools/release.py push --registry REGISTRY [--tag TAG] [--engine ...]
    python deploy/tools/release.py chart-push --registry REGISTRY
    python deploy/tools/release.py sbom
    python deploy/tools/release.py keygen --out DIR
    python deploy/tools/release.py sign --registry REGISTRY [--tag TAG] --key KEY \
        --passphrase-file FILE
    python deploy/tools/release.py sign --registry REGISTRY [--tag TAG] --keyless
    python deploy/tools/release.py verify --registry REGISTRY [--tag TAG] --public-key PUB
    python deploy/tools/release.py image-archive

The make targets of the same names run it (`make push`, `make chart-push`, `make sbom`,
`make signing-key`, `make sign`, `make verify`, `make image-archive`) with the deploy venv's
Python (cryptography, PyNaCl, cyclonedx-py); .github/workflows/release.yaml runs only those.

- Names: the images are the ones `make images` builds (build_images.image_refs(): the
  repositories of values.yaml, tag = the chart's appVersion), pushed as
  REGISTRY/<repository>:<tag>; the chart is `make chart-package`'s dist/<name>-<version>.tgz,
  pushed by `helm push` to oci://REGISTRY (so REGISTRY/<name>:<version>). What was pushed
  is written to dist/release/pushed.json (reference -> digest): sign and verify read it.
- A loopback registry (127.0.0.1, localhost, [::1]) is spoken to over plain HTTP
  (`--tls-verify=false`, `helm push --plain-http`); every other one over verified TLS.
- SBOMs: CycloneDX 1.5 JSON per image, into dist/sbom/<repository>.cdx.json: the Python
  images', `cyclonedx-py requirements` of the pinned file its Dockerfile installs
  (IMAGE_REQUIREMENTS); the edge's exporter's (deploy/varnish/exporter.Dockerfile), its base
  image (the chart's Varnish image) and the Debian packages the Dockerfile installs at the
  versions it pins (cyclonedx-python-lib, validated against the 1.5 schema).
- Signing with a key (here, and wherever a key is kept): each pushed image and the pushed
  chart get a signature stored in their repository in cosign's layout
  (`sha256-<digest>.sig`: the simple-signing payload naming the repository and digest, its
  ECDSA P-256 / SHA-256 signature in the layer's annotation), which `cosign verify --key`
  reads (no cosign runs here to show it); the chart archive and the SBOMs are signed as
  blobs in `cosign sign-blob`'s format (base64 signature, `<file>.sig`). Written over the
  registry API here, because Debian's podman 4.3 is built with sigstore disabled
  ("Debian-local change: sigstore disabled", for `push --sign-by-sigstore-private-key` and
  for `sigstoreSigned` policies alike). The key is cosign's format (ECDSA P-256, PKCS#8,
  encrypted with scrypt + nacl/secretbox), made by `keygen`. `verify` checks what `cosign
  verify --key` checks, the signatures by openssl.
- Keyless (the release workflow): cosign with GitHub's OIDC identity signs each pushed
  image and the chart by digest and attests each image's SBOM (`cosign attest --type
  cyclonedx`). It needs cosign and an OIDC token, so it runs only in the workflow.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import build_images  # deploy/tools/, the script's folder (on sys.path)

REPO = build_images.REPO
CHART = build_images.CHART
# RELEASE_DIST: another folder than dist/ (tests/deploy/test_release.py uses one of its own)
DIST = Path(os.environ.get("RELEASE_DIST") or REPO / "dist")
PUSHED = DIST / "release" / "pushed.json"
SBOM_DIR = DIST / "sbom"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
# values.yaml block -> the pinned requirements its Dockerfile installs
IMAGE_REQUIREMENTS = {
    "api": "requirements/api.txt",
    "statsFetcher": "requirements/stats-fetcher.txt",
    "replayUpstream": "requirements/dev.txt",
}
# The replay upstream installs only these from dev.txt (its Dockerfile's `-c dev.txt`).
REPLAY_UPSTREAM_PACKAGES = ("starlette", "uvicorn")
KEY_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
SIMPLE_SIGNING_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SCRYPT = {"N": 32768, "r": 8, "p": 1}


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def say(message: str) -> None:
    print(f"release: {message}", flush=True)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    say("$ " + " ".join(argv))
    result = subprocess.run(argv, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SystemExit(f"release: {argv[0]} exited {result.returncode}")
    return result  # type: ignore[no-any-return]


def loopback(registry: str) -> bool:
    host = registry.split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host in LOOPBACK_HOSTS or (host.startswith("[::1]"))


def repository_and_tag(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def image_targets(registry: str, tag: str | None) -> dict[str, tuple[str, str]]:
    """{block: (local reference `make images` built, REGISTRY/<repository>:<tag>)}."""
    targets = {}
    for block, ref in build_images.image_refs().items():
        repository, version = repository_and_tag(ref)
        targets[block] = (ref, f"{registry.rstrip('/')}/{repository}:{tag or version}")
    return targets


def chart_meta() -> tuple[str, str]:
    name = build_images.chart_scalar(CHART / "Chart.yaml", r"^name:\s*(\S+)")
    version = build_images.chart_scalar(CHART / "Chart.yaml", r'^version:\s*"?([^"\s]+)"?')
    return name, version


def load_pushed() -> dict[str, str]:
    if not PUSHED.is_file():
        raise SystemExit(f"release: no {_shown(PUSHED)}: run make push first")
    return dict(json.loads(PUSHED.read_text()))


def record_pushed(entries: dict[str, str]) -> None:
    PUSHED.parent.mkdir(parents=True, exist_ok=True)
    pushed = json.loads(PUSHED.read_text()) if PUSHED.is_file() else {}
    pushed.update(entries)
    PUSHED.write_text(json.dumps(pushed, indent=2, sort_keys=True) + "\n")


def podman_push(engine: build_images.Engine, local: str, remote: str) -> str:
    """Push ``local`` to ``remote``; its manifest digest."""
    with tempfile.TemporaryDirectory() as folder:
        digestfile = Path(folder) / "digest"
        if engine.name == "docker":
            run(["docker", "tag", local, remote])
            result = run(["docker", "push", remote], capture_output=True)
            print(result.stdout, end="")
            match = re.search(r"digest: (sha256:[0-9a-f]{64})", result.stdout)
            if not match:
                raise SystemExit(f"release: docker push printed no digest for {remote}")
            return match.group(1)
        argv = [engine.name, "push", "--digestfile", str(digestfile)]
        if loopback(remote):
            argv.append("--tls-verify=false")
        run([*argv, local, remote], env=engine.env)
        return digestfile.read_text().strip()


def cmd_login(options: argparse.Namespace) -> None:
    """podman login and helm registry login to the registry's host, the password read from
    REGISTRY_PASSWORD and given on standard input (never on a command line)."""
    username = os.environ.get("REGISTRY_USERNAME", "")
    password = os.environ.get("REGISTRY_PASSWORD", "")
    if not username or not password:
        raise SystemExit("release: login needs REGISTRY_USERNAME and REGISTRY_PASSWORD")
    host = options.registry.split("/", 1)[0]
    engine = build_images.pick_engine(options.engine)
    podman = [engine.name, "login", "--username", username, "--password-stdin"]
    helm = [options.helm, "registry", "login", "--username", username, "--password-stdin"]
    if loopback(host):
        helm.append("--plain-http")
        if engine.name == "podman":
            podman.append("--tls-verify=false")
    run([*podman, host], input=password, env=engine.env)
    run([*helm, host], input=password)


def check_release_tag() -> None:
    """In a workflow run for a pushed tag (GitHub's GITHUB_REF_TYPE / GITHUB_REF_NAME), the tag
    must be v<the chart's version>: what is pushed is named after Chart.yaml, not the tag."""
    if os.environ.get("GITHUB_REF_TYPE") != "tag":
        return
    _, version = chart_meta()
    tag = os.environ.get("GITHUB_REF_NAME", "")
    if tag != f"v{version}":
        raise SystemExit(
            f"release: the tag {tag!r} is not v{version} (Chart.yaml's version): "
            "bump Chart.yaml's version and appVersion, or tag v" + version
        )


def cmd_push(options: argparse.Namespace) -> None:
    check_release_tag()
    engine = build_images.pick_engine(options.engine)
    pushed = {}
    for local, remote in image_targets(options.registry, options.tag).values():
        if not engine.has(local):
            raise SystemExit(f"release: no image {local}: run make images first")
        pushed[remote] = podman_push(engine, local, remote)
        say(f"pushed {remote}@{pushed[remote]}")
    record_pushed(pushed)


def cmd_chart_push(options: argparse.Namespace) -> None:
    check_release_tag()
    name, version = chart_meta()
    archive = DIST / f"{name}-{version}.tgz"
    if not archive.is_file():
        raise SystemExit(f"release: no {_shown(archive)}: run make chart-package")
    argv = [options.helm, "push", str(archive), f"oci://{options.registry.rstrip('/')}"]
    if loopback(options.registry):
        argv.append("--plain-http")
    result = run(argv, capture_output=True)
    output = result.stdout + result.stderr
    print(output, end="")
    match = re.search(r"Digest:\s*(sha256:[0-9a-f]{64})", output)
    if not match:
        raise SystemExit("release: helm push printed no digest")
    ref = f"{options.registry.rstrip('/')}/{name}:{version}"
    record_pushed({ref: match.group(1)})
    say(f"pushed {ref}@{match.group(1)}")


def requirements_for(block: str) -> list[str]:
    """The pinned `name==version` lines the image's Dockerfile installs."""
    lines = [
        line.split(";")[0].strip()
        for line in (REPO / IMAGE_REQUIREMENTS[block]).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    ]
    if block != "replayUpstream":
        return lines
    # The replay upstream: starlette and uvicorn, constrained by dev.txt, and what they need.
    wanted = set(REPLAY_UPSTREAM_PACKAGES)
    dist_requires = _dependencies(lines)
    queue = list(wanted)
    while queue:
        for dependency in dist_requires.get(queue.pop(), ()):
            if dependency not in wanted:
                wanted.add(dependency)
                queue.append(dependency)
    return [line for line in lines if _name(line) in wanted]


def _name(line: str) -> str:
    return re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()


def _dependencies(lines: list[str]) -> dict[str, list[str]]:
    """{package: its unconditional dependencies}, from the installed metadata of the dev venv
    (where dev.txt is installed at exactly these versions)."""
    venv_python = REPO / ".venv" / "bin" / "python"
    script = (
        "import json, re, sys\n"
        "from importlib.metadata import distribution\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    reqs = distribution(name).requires or []\n"
        "    out[name] = [re.split(r'[ ;<>=!~\\[(]', r)[0] for r in reqs if 'extra ==' not in r]\n"
        "print(json.dumps(out))\n"
    )
    names = [_name(line) for line in lines]
    result = subprocess.run(
        [str(venv_python), "-c", script, *names], capture_output=True, text=True, check=True
    )
    return {name: [_name(dep) for dep in deps] for name, deps in json.loads(result.stdout).items()}


def apt_pins(dockerfile: Path) -> dict[str, str]:
    """{package: version} of every `apt-get install` of ``dockerfile`` (`name=version` or
    Debian's `name=version-*`, any revision of that version); an unpinned package is refused."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pins = {}
    for command in re.findall(r"apt-get install\s([^&;\n]*)", text):
        for word in command.split():
            if word.startswith("-"):
                continue
            name, equals, version = word.partition("=")
            if not equals or not version.rstrip("-*"):
                raise SystemExit(f"release: {_shown(dockerfile)} installs {word} unpinned")
            pins[name] = version.removesuffix("*").removesuffix("-")
    if not pins:
        raise SystemExit(f"release: {_shown(dockerfile)} installs no Debian package")
    return pins


def exporter_sbom(repository: str, version: str) -> str:
    """The exporter image's CycloneDX 1.5 JSON: the image as the subject; its base (the chart's
    Varnish image, pkg:docker) and the Debian packages its Dockerfile installs (pkg:deb) as the
    components. Reproducible (no serial number, no timestamp), as cyclonedx-py's."""
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot5
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    dockerfile = REPO / build_images.IMAGES[build_images.EXPORTER][0]
    base = build_images.varnish_base()
    base_path, base_tag = repository_and_tag(base)
    host, _, base_name = base_path.partition("/")
    namespace, _, name = base_name.rpartition("/")
    bom = Bom()
    subject = Component(
        type=ComponentType.CONTAINER,
        name=repository,
        version=version,
        bom_ref=f"{repository}:{version}",
    )
    bom.metadata.component = subject
    parts = [
        Component(
            type=ComponentType.CONTAINER,
            name=name,
            version=base_tag,
            bom_ref=base,
            purl=PackageURL(
                "docker", namespace or None, name, base_tag, qualifiers={"repository_url": host}
            ),
        )
    ]
    parts += [
        Component(
            type=ComponentType.APPLICATION,
            name=package,
            version=pinned,
            bom_ref=f"deb:{package}@{pinned}",
            purl=PackageURL("deb", "debian", package, pinned),
        )
        for package, pinned in sorted(apt_pins(dockerfile).items())
    ]
    for part in parts:
        bom.components.add(part)
    bom.register_dependency(subject, parts)
    document = json.loads(JsonV1Dot5(bom).output_as_string())
    document.pop("serialNumber", None)
    document["metadata"].pop("timestamp", None)
    document["metadata"].pop("tools", None)
    text = json.dumps(document, indent=2) + "\n"
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    if error:
        raise SystemExit(f"release: the exporter's SBOM is not CycloneDX 1.5: {error}")
    return text


def cmd_sbom(options: argparse.Namespace) -> None:
    SBOM_DIR.mkdir(parents=True, exist_ok=True)
    for block, ref in build_images.image_refs().items():
        repository, version = repository_and_tag(ref)
        if block == build_images.EXPORTER:
            out = SBOM_DIR / f"{repository}.cdx.json"
            out.write_text(exporter_sbom(repository, version))
            count = len(json.loads(out.read_text())["components"])
            say(f"{_shown(out)}: {count} components")
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as pinned:
            pinned.write("\n".join(requirements_for(block)) + "\n")
            pinned.flush()
            out = SBOM_DIR / f"{repository}.cdx.json"
            run(
                [
                    options.cyclonedx,
                    "requirements",
                    "--schema-version",
                    "1.5",
                    "--output-format",
                    "JSON",
                    "--output-reproducible",
                    "--outfile",
                    str(out),
                    pinned.name,
                ]
            )
        document = json.loads(out.read_text())
        # The SBOM's subject: the image (cyclonedx-py names no root component for a
        # requirements file).
        document.setdefault("metadata", {})["component"] = {
            "type": "container",
            "bom-ref": f"{repository}:{version}",
            "name": repository,
            "version": version,
        }
        out.write_text(json.dumps(document, indent=2) + "\n")
        say(f"{_shown(out)}: {len(document.get('components', []))} components")


# ---- signing -------------------------------------------------------------------------------


def _encrypt(plaintext: bytes, passphrase: bytes) -> bytes:
    """go-securesystemslib's `encrypted` format, which cosign and containers/image read."""
    import nacl.secret

    salt = secrets.token_bytes(32)
    key = hashlib.scrypt(
        passphrase, salt=salt, n=SCRYPT["N"], r=SCRYPT["r"], p=SCRYPT["p"], maxmem=2**27, dklen=32
    )
    nonce = secrets.token_bytes(24)
    box = nacl.secret.SecretBox(key)
    ciphertext = box.encrypt(plaintext, nonce).ciphertext
    return json.dumps(
        {
            "kdf": {"name": "scrypt", "params": SCRYPT, "salt": base64.b64encode(salt).decode()},
            "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
            "ciphertext": base64.b64encode(ciphertext).decode(),
        }
    ).encode()


def _decrypt(blob: bytes, passphrase: bytes) -> bytes:
    import nacl.secret

    data = json.loads(blob)
    params = data["kdf"]["params"]
    key = hashlib.scrypt(
        passphrase,
        salt=base64.b64decode(data["kdf"]["salt"]),
        n=params["N"],
        r=params["r"],
        p=params["p"],
        maxmem=2**27,
        dklen=32,
    )
    box = nacl.secret.SecretBox(key)
    return bytes(
        box.decrypt(base64.b64decode(data["ciphertext"]), base64.b64decode(data["cipher"]["nonce"]))
    )


def _pem(kind: str, der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----\n"


def cmd_keygen(options: argparse.Namespace) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    passphrase = secrets.token_urlsafe(24).encode()
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name, content in (
        ("cosign.password", passphrase),
        ("cosign.key", _pem(KEY_PEM_TYPE, _encrypt(der, passphrase)).encode()),
    ):
        path = out / name
        path.write_bytes(content)
        os.chmod(path, 0o600)
    (out / "cosign.pub").write_bytes(public)
    say(f"{out}/cosign.key (encrypted with {out}/cosign.password) and {out}/cosign.pub")


def _private_key(key: Path, passphrase_file: Path) -> object:
    from cryptography.hazmat.primitives import serialization

    text = key.read_text()
    match = re.search(rf"-----BEGIN {KEY_PEM_TYPE}-----\n(.+?)-----END", text, re.S)
    if not match:
        raise SystemExit(f"release: {key} is not an {KEY_PEM_TYPE}")
    der = _decrypt(base64.b64decode(match.group(1)), passphrase_file.read_bytes().strip())
    return serialization.load_der_private_key(der, password=None)


def blobs_to_sign() -> list[Path]:
    name, version = chart_meta()
    return [DIST / f"{name}-{version}.tgz", *sorted(SBOM_DIR.glob("*.cdx.json"))]


def cmd_sign(options: argparse.Namespace) -> None:
    pushed = load_pushed()
    images = [remote for _, remote in image_targets(options.registry, options.tag).values()]
    missing = [ref for ref in images if ref not in pushed]
    if missing:
        raise SystemExit(f"release: not pushed (make push): {missing}")
    blobs = blobs_to_sign()
    if any(not blob.is_file() for blob in blobs) or len(blobs) < 1 + len(images):
        raise SystemExit("release: sign needs make chart-package and make sbom first")
    if options.keyless:
        sign_keyless(options, pushed, images)
        return
    if not options.key or not options.passphrase_file:
        raise SystemExit(
            "release: sign needs SIGNING_KEY and SIGNING_PASSWORD_FILE, or SIGNER=keyless"
        )
    key, passphrase = Path(options.key), Path(options.passphrase_file)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    private = _private_key(key, passphrase)

    def sign_bytes(data: bytes) -> bytes:
        return private.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined,no-any-return]

    name, version = chart_meta()
    chart = f"{options.registry.rstrip('/')}/{name}:{version}"
    for remote in [*images, *([chart] if chart in pushed else [])]:
        tag = attach_signature(remote, pushed[remote], sign_bytes)
        say(f"signed {remote}@{pushed[remote]} -> {tag}")
    for blob in blobs:
        Path(f"{blob}.sig").write_text(base64.b64encode(sign_bytes(blob.read_bytes())).decode())
        say(f"signed {_shown(blob)} -> {blob.name}.sig")


# ---- the registry API (distribution v2 / OCI), for the signatures ------------------------


def _registry_url(ref: str) -> tuple[str, str]:
    """(base URL, repository name) of REGISTRY/<path>:<tag>."""
    host, _, path = ref.partition("/")
    repository = path.rsplit(":", 1)[0] if ":" in path.rsplit("/", 1)[-1] else path
    scheme = "http" if loopback(host) else "https"
    return f"{scheme}://{host}", repository


def _request(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Any:
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"release: not an HTTP URL: {url}")
    request = urllib.request.Request(  # noqa: S310 (http(s) only, checked above)
        url, data=body or None, method=method, headers=headers or {}
    )
    try:
        return urllib.request.urlopen(request, timeout=60)  # noqa: S310
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        hint = (
            " (the key signer speaks to registries without authentication)"
            if error.code == 401
            else ""
        )
        raise SystemExit(f"release: {method} {url}: {error.code} {detail}{hint}") from error


def _put_blob(base: str, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _request("POST", f"{base}/v2/{repository}/blobs/uploads/") as answer:
        location = answer.headers["Location"]
    url = urllib.parse.urljoin(f"{base}/", location)
    url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
    _request("PUT", url, data, {"Content-Type": "application/octet-stream"}).close()
    return digest


def attach_signature(ref: str, digest: str, sign_bytes: Callable[[bytes], bytes]) -> str:
    """Store a signature of the image ``ref``@``digest`` in its repository as cosign and
    containers/image do (`sigstore attachments`): an OCI manifest tagged
    sha256-<hex>.sig whose one layer is the simple-signing payload, the signature in the
    layer's `dev.cosignproject.cosign/signature` annotation. The tag's name."""
    base, repository = _registry_url(ref)
    payload = json.dumps(
        {
            "critical": {
                # the repository, without the tag, as cosign writes it
                "identity": {"docker-reference": f"{base.split('://', 1)[1]}/{repository}"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()
    payload_digest = _put_blob(base, repository, payload)
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
        }
    ).encode()
    config_digest = _put_blob(base, repository, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "size": len(config),
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": SIMPLE_SIGNING_TYPE,
                    "size": len(payload),
                    "digest": payload_digest,
                    "annotations": {
                        SIGNATURE_ANNOTATION: base64.b64encode(sign_bytes(payload)).decode()
                    },
                }
            ],
        }
    ).encode()
    tag = digest.replace(":", "-") + ".sig"
    _request(
        "PUT",
        f"{base}/v2/{repository}/manifests/{tag}",
        manifest,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ).close()
    return tag


def sign_keyless(options: argparse.Namespace, pushed: dict[str, str], images: list[str]) -> None:
    cosign = shutil.which("cosign")
    if cosign is None:
        raise SystemExit("release: keyless signing needs cosign (the workflow installs it)")
    name, version = chart_meta()
    chart = f"{options.registry.rstrip('/')}/{name}:{version}"
    for ref in [*images, chart]:
        repository = ref.rsplit(":", 1)[0]
        run([cosign, "sign", "--yes", f"{repository}@{pushed[ref]}"])
    for block, remote in image_targets(options.registry, options.tag).items():
        repository = remote[1].rsplit(":", 1)[0]
        sbom = SBOM_DIR / f"{repository_and_tag(build_images.image_refs()[block])[0]}.cdx.json"
        run(
            [
                cosign,
                "attest",
                "--yes",
                "--type",
                "cyclonedx",
                "--predicate",
                str(sbom),
                f"{repository}@{pushed[remote[1]]}",
            ]
        )
    for blob in blobs_to_sign():
        run([cosign, "sign-blob", "--yes", "--bundle", f"{blob}.sigstore.json", str(blob)])


def _openssl_verify(public: Path, data: bytes, signature_b64: str) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "data").write_bytes(data)
        (Path(folder) / "sig").write_bytes(base64.b64decode(signature_b64))
        result = subprocess.run(
            [
                "openssl",
                "dgst",
                "-sha256",
                "-verify",
                str(public),
                "-signature",
                f"{folder}/sig",
                f"{folder}/data",
            ],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0


def _get(url: str, accept: str = "") -> tuple[bytes, dict[str, str]]:
    headers = {"Accept": accept} if accept else {}
    with _request("GET", url, headers=headers) as answer:
        return answer.read(), dict(answer.headers)


MANIFEST_TYPES = ",".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def verify_image(ref: str, digest: str, public: Path) -> None:
    """What `cosign verify --key` checks: the tag names ``digest``; a signature manifest
    sha256-<hex>.sig holds a payload naming this repository and digest, signed by the key
    (checked by openssl)."""
    base, repository = _registry_url(ref)
    tag = ref.rsplit(":", 1)[1]
    manifest, _ = _get(f"{base}/v2/{repository}/manifests/{tag}", MANIFEST_TYPES)
    served = "sha256:" + hashlib.sha256(manifest).hexdigest()
    if served != digest:
        raise SystemExit(f"release: {ref} is {served} in the registry, {digest} was pushed")
    signatures, _ = _get(
        f"{base}/v2/{repository}/manifests/{digest.replace(':', '-')}.sig",
        "application/vnd.oci.image.manifest.v1+json",
    )
    good = 0
    for layer in json.loads(signatures)["layers"]:
        if layer.get("mediaType") != SIMPLE_SIGNING_TYPE:
            continue
        payload, _ = _get(f"{base}/v2/{repository}/blobs/{layer['digest']}")
        if "sha256:" + hashlib.sha256(payload).hexdigest() != layer["digest"]:
            continue
        critical = json.loads(payload)["critical"]
        named = critical["identity"]["docker-reference"]
        signature = layer.get("annotations", {}).get(SIGNATURE_ANNOTATION, "")
        if (
            critical["type"] == "cosign container image signature"
            and critical["image"]["docker-manifest-digest"] == digest
            and named == f"{base.split('://', 1)[1]}/{repository}"
            and signature
            and _openssl_verify(public, payload, signature)
        ):
            good += 1
    if not good:
        raise SystemExit(f"release: {ref}@{digest}: no signature by {public}")


def cmd_verify(options: argparse.Namespace) -> None:
    """Each pushed image's signature in the registry, each blob's signature file, against
    the public key."""
    pushed = load_pushed()
    public = Path(options.public_key).resolve()
    for _, remote in image_targets(options.registry, options.tag).values():
        if remote not in pushed:
            raise SystemExit(f"release: {remote} was not pushed (make push)")
        verify_image(remote, pushed[remote], public)
        say(f"verified {remote}@{pushed[remote]}")
    name, version = chart_meta()
    chart = f"{options.registry.rstrip('/')}/{name}:{version}"
    if chart in pushed:
        verify_image(chart, pushed[chart], public)
        say(f"verified {chart}@{pushed[chart]}")
    for blob in blobs_to_sign():
        sig = Path(f"{blob}.sig")
        if not sig.is_file() or not _openssl_verify(public, blob.read_bytes(), sig.read_text()):
            raise SystemExit(f"release: {_shown(blob)}: no valid signature by {public}")
        say(f"verified {_shown(blob)}")


def cmd_image_archive(options: argparse.Namespace) -> None:
    """One archive of the images `make images` builds, named localhost/<repository>:<tag>
    (podman's names; docker's are retagged so), for `kind load image-archive`, `k3d image import`,
    `minikube image load`."""
    engine = build_images.pick_engine(options.engine)
    refs = []
    for ref in build_images.image_refs().values():
        local = f"localhost/{ref}"
        if engine.name == "docker":
            run(["docker", "tag", ref, local])
        refs.append(local)
    DIST.mkdir(exist_ok=True)
    out = DIST / "covid-stats-images.tar"
    out.unlink(missing_ok=True)
    argv = [engine.name, "save", "-o", str(out)]
    if engine.name == "podman":
        argv += ["--format", "docker-archive", "--multi-image-archive"]
    run([*argv, *refs], env=engine.env)
    say(f"{_shown(out)}: {', '.join(refs)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login")
    login.add_argument("--registry", required=True)
    login.add_argument("--engine", choices=["podman", "docker"])
    login.add_argument("--helm", default=str(REPO / ".venv" / "bin" / "helm"))
    for name in ("push", "sign", "verify"):
        command = sub.add_parser(name)
        command.add_argument("--registry", required=True, help="host[:port]/path, no scheme")
        command.add_argument("--tag", default="", help="default: the chart's appVersion")
        command.add_argument("--engine", choices=["podman", "docker"])
    sub.choices["sign"].add_argument("--key")
    sub.choices["sign"].add_argument("--passphrase-file")
    sub.choices["sign"].add_argument("--keyless", action="store_true")
    sub.choices["verify"].add_argument("--public-key", required=True)
    chart_push = sub.add_parser("chart-push")
    chart_push.add_argument("--registry", required=True)
    chart_push.add_argument("--helm", default=str(REPO / ".venv" / "bin" / "helm"))
    sbom = sub.add_parser("sbom")
    sbom.add_argument("--cyclonedx", default=str(Path(sys.executable).parent / "cyclonedx-py"))
    keygen = sub.add_parser("keygen")
    keygen.add_argument("--out", required=True)
    archive = sub.add_parser("image-archive")
    archive.add_argument("--engine", choices=["podman", "docker"])
    options = parser.parse_args()
    if getattr(options, "registry", "").startswith(("oci://", "http://", "https://")):
        parser.error("--registry: host[:port]/path, without a scheme")
    if getattr(options, "registry", ""):
        # OCI repository names are lower case (ghcr.io/<Owner> is refused otherwise)
        options.registry = options.registry.lower().rstrip("/")
    {
        "login": cmd_login,
        "push": cmd_push,
        "chart-push": cmd_chart_push,
        "sbom": cmd_sbom,
        "keygen": cmd_keygen,
        "sign": cmd_sign,
        "verify": cmd_verify,
        "image-archive": cmd_image_archive,
    }[options.command](options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
