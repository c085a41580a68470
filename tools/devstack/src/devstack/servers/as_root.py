"""Running PostgreSQL when we are root (it refuses to run as root).

``initdb`` and ``postgres`` then run as the unprivileged system user ``covidstats-pg``
(created with ``useradd`` when missing); the data directory is given to that user and ``o+x``
is added to every parent directory of the data directory and of the PostgreSQL install so
that user can reach them.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("devstack")

PG_SYSTEM_USER = "covidstats-pg"
"""System user that runs PostgreSQL when we are root."""


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int


def user_kwargs(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def pg_run_as() -> RunAs | None:
    """None when not root; else the unprivileged user postgres must run as (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=False,
            capture_output=True,
        )
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)  # a concurrent useradd may have won the race
        except KeyError:
            raise RuntimeError(
                f"cannot create system user {PG_SYSTEM_USER!r} for PostgreSQL (useradd failed)"
            ) from None
    return RunAs(entry.pw_uid, entry.pw_gid)


def ensure_traversable(path: Path) -> None:
    """Add o+x to ``path`` and every parent directory that lacks it."""
    for d in [path, *path.parents]:
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("chmod o+x %s (so %s can reach its files)", d, PG_SYSTEM_USER)
            d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def ensure_install_readable(install_dir: Path) -> None:
    """Make the PostgreSQL install reachable and readable by other users (o+rX)."""
    ensure_traversable(install_dir)
    if (install_dir / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
        return  # installed world-readable, the normal case
    for dirpath, _dirnames, filenames in os.walk(install_dir):
        d = Path(dirpath)
        d.chmod(stat.S_IMODE(d.stat().st_mode) | stat.S_IROTH | stat.S_IXOTH)
        for name in filenames:
            f = d / name
            if f.is_symlink():
                continue
            mode = stat.S_IMODE(f.stat().st_mode)
            extra = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            f.chmod(mode | extra)
