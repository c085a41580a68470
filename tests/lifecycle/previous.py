"""The previous release for the lifecycle suite: this repository at PREVIOUS_COMMIT, checked
out with `git worktree add --detach` in a temporary folder, its images built by ITS OWN
deploy/tools/build_images.py (only the tag changed: `:<short sha>`, so the current `:<appVersion>`
images `make images` builds are left alone), and its chart rendered from that worktree:
what `helm upgrade` from that release and `helm rollback` to it change."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pods import Podman
from support import REPO

# The release the lifecycle suite upgrades from and rolls back to. d98e3f1 ("Expand/contract
# migrations"): the first commit whose `migrate` (run by the fetcher's init container on a
# rollback) and startup check accept a database a newer release migrated additively. A commit
# before it cannot be rolled back to once a newer migration ran (its init container refuses
# the newer database: the deadlock of issue 21, item 1); this release's migrations go past it
# (0003_upstream_body_bytes and later), so the rollback crosses at least one migration, which
# the suite checks. Move it forward when a newer release is the one to prove against.
PREVIOUS_COMMIT = "d98e3f1"

# build_images.py of the previous commit, run with its image names re-tagged `:<tag>`.
_BUILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("build_images", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
refs, tag = module.image_refs, sys.argv[2]
module.image_refs = lambda: {
    block: ref.rsplit(":", 1)[0] + ":" + tag for block, ref in refs().items()
}
sys.argv = sys.argv[:1]
sys.exit(module.main())
"""


@dataclass(frozen=True)
class Previous:
    commit: str  # full sha
    tag: str  # the images' tag: the short sha
    root: Path  # the worktree
    built_in: float | None  # seconds the build took; None: the images were there already

    @property
    def chart(self) -> Path:
        return self.root / "deploy" / "helm" / "covid-stats"


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def previous_release(podman: Podman, images: list[str]) -> Iterator[Previous]:
    """The worktree of PREVIOUS_COMMIT and its images (``images``: the repositories, without
    a tag), built unless all of them exist with its tag already (so CI builds them once)."""
    commit = git("rev-parse", "--verify", f"{PREVIOUS_COMMIT}^{{commit}}")
    tag = git("rev-parse", "--short=7", commit)
    with tempfile.TemporaryDirectory(prefix="covid-stats-lc-previous-") as folder:
        root = Path(folder) / "repo"
        git("worktree", "add", "--detach", str(root), commit)
        try:
            built_in = None
            if not all(podman.image_exists(f"{image}:{tag}") for image in images):
                started = time.monotonic()
                script = root / "deploy" / "tools" / "build_images.py"
                result = subprocess.run(
                    [sys.executable, "-c", _BUILD, str(script), tag],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=False,
                )
                assert result.returncode == 0, (
                    f"building the images of {commit} failed:\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}"
                )
                built_in = time.monotonic() - started
            missing = [image for image in images if not podman.image_exists(f"{image}:{tag}")]
            assert not missing, f"{commit}'s build made no {missing} tagged {tag}"
            yield Previous(commit, tag, root, built_in)
        finally:
            git("worktree", "remove", "--force", str(root))
