"""The packages' pins (libs/*, services/*, tools/* pyproject.toml) are the requirements' pins.

Each package lists its direct dependencies at exact versions (``name==version``), like
requirements/*.in, which `make lock` compiles and the images install (a service image installs
its requirements/<service>.txt, then the packages with ``--no-deps``; `make install` installs
dev.txt). Exact pins, not ranges: a range in a pyproject would say the package works with
versions no test ever ran, and the pyproject would stop telling which version the images and
the tests run. So this test holds the two lists together: a pin bumped in one place only, a
dependency added to a package but to no requirements file, or a package pin that is not exact
fails here, naming the package, the dependency and both versions.

Which requirements file must carry a package's pins: a service's own (``services/api`` ->
``requirements/api.in``), every service's that depends on a library (read from the services'
own dependencies), and dev.in (with the files it includes) for everything, since `make
install` installs every package into one .venv.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import REPO

pytestmark = pytest.mark.unit  # `make test-fast`

REQUIREMENTS = REPO / "requirements"
PYPROJECTS = sorted(
    path
    for folder in ("libs", "services", "tools")
    for path in (REPO / folder).glob("*/pyproject.toml")
)


def _project(pyproject: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(pyproject.read_text())["project"]
    return project


def _dependencies(pyproject: Path) -> list[Requirement]:
    deps = _project(pyproject).get("dependencies", [])
    assert isinstance(deps, list)
    return [Requirement(dep) for dep in deps]


def _exact(requirement: Requirement, where: str) -> str:
    """The version of a ``name==version`` pin; fails on anything else (a range, no version)."""
    specs = list(requirement.specifier)
    assert len(specs) == 1, f"{where}: {requirement} is not pinned to one exact version"
    assert specs[0].operator == "==", f"{where}: {requirement} is not an exact (==) pin"
    return specs[0].version


def pins(in_file: Path) -> dict[str, str]:
    """{canonical name: version} of a requirements .in file and the files it includes (-r)."""
    found: dict[str, str] = {}
    for raw in in_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            for name, version in pins(in_file.parent / line[3:].strip()).items():
                assert found.setdefault(name, version) == version, (in_file, name)
            continue
        assert not line.startswith("-"), f"{in_file.name}: an option line: {line}"
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        version = _exact(requirement, in_file.name)
        assert found.setdefault(name, version) == version, f"{in_file.name}: {name} twice"
    return found


# The workspace's own packages: {canonical name: (pyproject, version)}.
WORKSPACE: dict[str, tuple[Path, str]] = {
    canonicalize_name(str(_project(path)["name"])): (path, str(_project(path)["version"]))
    for path in PYPROJECTS
}
# The services: {canonical package name: its requirements .in, named after its folder}.
SERVICES: dict[str, Path] = {
    canonicalize_name(str(_project(path)["name"])): REQUIREMENTS / f"{path.parent.name}.in"
    for path in PYPROJECTS
    if path.parent.parent.name == "services"
}


def requirement_files(package: str) -> list[Path]:
    """The .in files that must pin ``package``'s dependencies: dev.in always, a service's own,
    and every service's that depends on it (directly or through another workspace package)."""
    files = [REQUIREMENTS / "dev.in"]
    for service, in_file in SERVICES.items():
        if package == service or package in _workspace_closure(service):
            files.append(in_file)
    return files


def _workspace_closure(package: str) -> set[str]:
    """The workspace packages ``package`` depends on, directly or not."""
    seen: set[str] = set()
    todo = [package]
    while todo:
        path, _ = WORKSPACE[todo.pop()]
        for requirement in _dependencies(path):
            name = canonicalize_name(requirement.name)
            if name in WORKSPACE and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_every_package_and_service_is_found() -> None:
    assert len(PYPROJECTS) == 6
    assert set(SERVICES) == {"covid-stats-api", "covid-stats-fetcher"}
    for in_file in SERVICES.values():
        assert in_file.is_file(), in_file
    # The libraries reach both services' requirements through the services' own pins.
    assert len(requirement_files("covid-stats-contract")) == 3


@pytest.mark.parametrize(
    "pyproject", PYPROJECTS, ids=[str(p.parent.relative_to(REPO)) for p in PYPROJECTS]
)
def test_package_pins_are_the_requirements_pins(pyproject: Path) -> None:
    package = canonicalize_name(str(_project(pyproject)["name"]))
    where = str(pyproject.relative_to(REPO))
    requirements = {in_file.name: pins(in_file) for in_file in requirement_files(package)}
    wrong = []
    for requirement in _dependencies(pyproject):
        name = canonicalize_name(requirement.name)
        version = _exact(requirement, where)
        if name in WORKSPACE:
            if version != (own := WORKSPACE[name][1]):
                wrong.append(f"{name}=={version}, but {name} is version {own}")
            continue
        for in_file, pinned in requirements.items():
            if name not in pinned:
                wrong.append(f"{name}=={version} is in no pin of requirements/{in_file}")
            elif pinned[name] != version:
                wrong.append(f"{name}=={version}, but requirements/{in_file} pins {pinned[name]}")
    assert not wrong, f"{where}: " + "; ".join(wrong)
