"""The README and docs/ tell the truth: the settings table is the one the settings classes
generate, the other variables are read by the code, the README stays short and every relative
link resolves."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from covid_stats_runtime.settings import StoreSettings
from devstack import config_docs
from support import REPO

pytestmark = pytest.mark.unit  # `make test-fast`

CONFIGURATION = REPO / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([a-z ,-]+) \| (.+?) \| .+ \|$")
README_MAX_LINES = 200


def _table(text: str) -> dict[tuple[str, str], str]:
    """{(service or tool, VARIABLE): default} of the tables of ``text``."""
    rows = {}
    for line in text.splitlines():
        if match := _ROW.match(line):
            name, services, default = match.groups()
            for service in services.split(", "):
                rows[(service, name)] = default
    return rows


def test_the_settings_table_is_the_generated_one() -> None:
    """docs/configuration.md's table is what `make config-docs` writes now (drift)."""
    text = CONFIGURATION.read_text()
    assert config_docs.rendered(text) == text, "stale: run `make config-docs`"


@pytest.mark.parametrize(("service", "settings"), config_docs.SERVICES.items())
def test_every_setting_is_in_the_table_with_its_default(
    service: str, settings: type[StoreSettings]
) -> None:
    table = _table(CONFIGURATION.read_text())
    documented = {name for (svc, name) in table if svc == service}
    assert documented == set(settings.env_vars())
    for name, field in settings.model_fields.items():
        documented_default = "(unset)" if field.default is None else f"`{field.default}`"
        assert table[(service, settings.env_var(name))] == documented_default, name
        assert field.description, f"{name}: the table's meaning is the field's description"


def test_the_shared_settings_are_declared_once() -> None:
    """The stores' and logging settings come from the runtime library, not from each service."""
    for settings in config_docs.SERVICES.values():
        assert issubclass(settings, StoreSettings)
        own = inspect.get_annotations(settings)
        assert not set(own) & set(StoreSettings.model_fields), settings


def test_the_other_documented_variables_are_read_by_the_code() -> None:
    sources = "\n".join(
        path.read_text()
        for folder in ("tools", "tests")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "test_readme.py"
    )
    tools = {"make run", "make soak", "tests"}
    others = [name for (svc, name) in _table(CONFIGURATION.read_text()) if svc in tools]
    assert len(others) >= 7
    for name in others:
        assert f'"{name}"' in sources, name


def test_the_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md: {len(lines)} lines; move some to docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(_slug(match[1]))
    return anchors


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path) -> None:
    """Each link to a file of the repository names one that exists, and each anchor a heading
    of its document."""
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
    links = _LINK.findall(text)
    assert links or document.parent.name == "docs", "the README links to docs/"
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.exists(), f"{document.name}: {link}: no {path}"
        if anchor:
            assert path.suffix == ".md", link
            assert anchor in _anchors(path), f"{document.name}: {link}: no such heading"


def test_the_slug_is_githubs() -> None:
    assert _slug("Cached reads: two tiers, bytes end to end") == (
        "cached-reads-two-tiers-bytes-end-to-end"
    )
    assert _slug("The containers suite (`make test-containers`; `.ci/run` runs it)") == (
        "the-containers-suite-make-test-containers-cirun-runs-it"
    )
