"""docs/configuration.md's settings table, generated from the services' settings classes
(``make config-docs``).

    python -m devstack.config_docs           # rewrite the table in docs/configuration.md
    python -m devstack.config_docs --check   # exit 1 when the committed table is stale

One row per environment variable and service: the variable (the field's name in capitals, as
pydantic-settings reads it), the service, its default, what it accepts beyond its type (the
field's bounds, or its choices), and its meaning (the field's ``description``). A setting both
services declare alike (the shared ``StoreSettings``: stores and logging) is one row for both.
The table sits between ``<!-- settings:start -->`` and ``<!-- settings:end -->``;
tests/system/test_readme.py fails when it differs from a fresh one (drift).
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo

from covid_stats_api.core.config import Settings as ApiSettings
from covid_stats_runtime.settings import StoreSettings
from stats_fetcher.config import Settings as FetcherSettings

DOC = Path(__file__).resolve().parents[4] / "docs" / "configuration.md"
START = "<!-- settings:start -->"
END = "<!-- settings:end -->"

# service -> its settings class, in the table's order
SERVICES: dict[str, type[StoreSettings]] = {"api": ApiSettings, "stats-fetcher": FetcherSettings}

_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def default(field: FieldInfo) -> str:
    return "(unset)" if field.default is None else f"`{field.default}`"


def accepts(field: FieldInfo) -> str:
    """What the field accepts beyond its type: its bounds, or its choices."""
    if typing.get_origin(field.annotation) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(field.annotation))
    bounds = [
        f"{sign} {getattr(item, attr)}"
        for item in field.metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(item, kind)
    ]
    return ", ".join(bounds) or "-"


def _row(variable: str, service: str, field: FieldInfo) -> str:
    if not field.description:
        raise SystemExit(f"{service}: the setting {variable} has no description")
    cells = (f"`{variable}`", service, default(field), accepts(field), field.description)
    return "| " + " | ".join(cells) + " |"


def table() -> str:
    """The settings table: the settings every service declares alike first, then each
    service's own, each in its class's order."""
    classes = list(SERVICES.values())
    first = classes[0].model_fields

    def alike(name: str) -> bool:
        field = first[name]
        return all(
            name in other.model_fields
            and repr(other.model_fields[name]) == repr(field)
            and other.model_fields[name].annotation == field.annotation
            for other in classes[1:]
        )

    shared = [name for name in first if alike(name)]
    lines = [
        "| Variable | Service | Default | Accepts | Meaning |",
        "|---|---|---|---|---|",
        *(_row(classes[0].env_var(name), ", ".join(SERVICES), first[name]) for name in shared),
    ]
    for service, settings in SERVICES.items():
        lines += [
            _row(settings.env_var(name), service, field)
            for name, field in settings.model_fields.items()
            if name not in shared
        ]
    return "\n".join(lines)


def rendered(text: str) -> str:
    """``text`` with the table between its markers replaced by a fresh one."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{DOC}: the {START} / {END} markers are missing")
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the table is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    fresh = rendered(text)
    if args.check:
        if fresh != text:
            print(f"{DOC} is stale: run `make config-docs`", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        DOC.write_text(fresh)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
