"""The README's configuration table tells the truth about the settings classes."""

from __future__ import annotations

import re

import pytest
from pydantic_settings import BaseSettings

from covid_stats_api.core.config import Settings as ApiSettings
from stats_fetcher.config import Settings as FetcherSettings
from support import REPO

_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([a-z -]+) \| (.+?) \| .+ \|$")


def _table() -> dict[tuple[str, str], str]:
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        match = _ROW.match(line)
        if match:
            name, service, default = match.groups()
            rows[(service, name)] = default
    return rows


@pytest.mark.parametrize(
    ("service", "settings"), [("api", ApiSettings), ("stats-fetcher", FetcherSettings)]
)
def test_every_setting_is_in_the_table_with_its_default(
    service: str, settings: type[BaseSettings]
) -> None:
    table = _table()
    documented = {name for (svc, name) in table if svc == service}
    fields = settings.model_fields
    assert documented == {name.upper() for name in fields}
    for name, field in fields.items():
        documented_default = "(unset)" if field.default is None else f"`{field.default}`"
        assert table[(service, name.upper())] == documented_default, name


def test_the_other_documented_variables_are_read_by_the_code() -> None:
    sources = "\n".join(
        path.read_text()
        for folder in ("tools", "tests")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "test_readme.py"
    )
    others = [name for (svc, name) in _table() if svc in ("make run", "tests")]
    assert others
    for name in others:
        assert f'"{name}"' in sources, name
