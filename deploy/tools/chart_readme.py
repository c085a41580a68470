"""The chart README's parameter table, generated from values.yaml, and Chart.yaml's icon,
from the api's favicon (``make chart-readme``).

    python deploy/tools/chart_readme.py            # rewrite the table and the icon
    python deploy/tools/chart_readme.py --check    # exit 1 when either is stale

Every value of deploy/helm/covid-stats/values.yaml is a row: its key, its default (JSON) and
its description, the ``# --`` comment written above it (helm-docs' convention: a comment that
starts with ``# --`` and the ``#`` lines that follow it). A map with a ``# --`` comment and no
documented key inside it is one row (``metrics.jobs``); other maps are listed key by key.
The table sits between the README's ``<!-- parameters:start -->`` and ``<!-- parameters:end
-->`` lines; tests/deploy/test_publishing.py fails when it differs from a fresh one (drift).
PyYAML (for the defaults) and the standard library only.

The icon is services/api/src/covid_stats_api/static/favicon.svg (the page's icon) as a
``data:image/svg+xml;base64,...`` URL on Chart.yaml's ``icon:`` line: the project publishes no
logo at a public URL, and Artifact Hub takes a data URL as it takes an http(s) one (it
decodes it instead of downloading, and keeps an SVG as it is); ``helm lint --strict``
accepts it.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "covid-stats"
FAVICON = REPO / "services" / "api" / "src" / "covid_stats_api" / "static" / "favicon.svg"
_ICON = re.compile(r"(?m)^icon: .*$")
START = "<!-- parameters:start -->"
END = "<!-- parameters:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?:\s|$)")


def comments(values_text: str) -> dict[str, str]:
    """The ``# --`` comment of each key, by dotted path."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the maps the line is inside
    pending: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending = None
            continue
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if text.startswith("--"):
                pending = [text[2:].strip()]
            elif pending is not None:
                pending.append(text)
            continue
        match = _KEY.match(line)
        if not match:  # a list item or a continuation: not a key of ours
            pending = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([key for _, key in stack] + [match["key"]])
        if pending is not None:
            found[path] = " ".join(part for part in pending if part)
        pending = None
        stack.append((indent, match["key"]))
    return found


def rows(values: dict[str, Any], documented: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, default as JSON, description) of every value, in the file's order; a documented
    map whose keys are listed too has an empty default."""
    result: list[tuple[str, str, str]] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            inner = any(k.startswith(f"{path}.") for k in documented)
            if isinstance(value, dict) and value and (path not in documented or inner):
                if path in documented:
                    result.append((path, "", documented[path]))
                walk(value, f"{path}.")
            else:
                result.append((path, f"`{json.dumps(value)}`", documented.get(path, "")))

    walk(values, "")
    return result


def _cell(text: str) -> str:
    """A table cell: | escaped, < and > as entities (else Markdown takes <tag> for HTML)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(values_text: str) -> str:
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    for key, default, description in rows(yaml.safe_load(values_text), comments(values_text)):
        lines.append(f"| `{key}` | {_cell(default)} | {_cell(description)} |")
    return "\n".join(lines)


def updated_readme(readme: str, values_text: str) -> str:
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"the chart README has no {START} ... {END} block")
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def icon_url(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def updated_chart_yaml(chart_yaml: str, svg: bytes) -> str:
    """Chart.yaml with its ``icon:`` line set to the SVG's data URL (the rest as it is)."""
    line = f"icon: {icon_url(svg)}"
    if not _ICON.search(chart_yaml):
        raise SystemExit("Chart.yaml has no `icon:` line to update")
    return _ICON.sub(lambda _: line, chart_yaml, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--check", action="store_true", help="fail when either is stale")
    parser.add_argument("--favicon", type=Path, default=FAVICON)
    args = parser.parse_args(argv)
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    fresh = updated_readme(readme, (args.chart / "values.yaml").read_text())
    chart_path = args.chart / "Chart.yaml"
    chart_yaml = chart_path.read_text()
    fresh_chart = updated_chart_yaml(chart_yaml, args.favicon.read_bytes())
    if args.check:
        stale = []
        if fresh != readme:
            stale.append(f"{readme_path}: the parameter table is stale")
        if fresh_chart != chart_yaml:
            stale.append(f"{chart_path}: the icon is not {args.favicon.name}")
        for line in stale:
            print(f"{line}: run `make chart-readme`")
        return 1 if stale else 0
    readme_path.write_text(fresh)
    chart_path.write_text(fresh_chart)
    print(f"wrote {readme_path} and {chart_path}'s icon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
