"""The chart README's parameter table, generated from values.yaml (``make chart-readme``).

    python deploy/tools/chart_readme.py            # rewrite the table in the chart README
    python deploy/tools/chart_readme.py --check    # exit 1 when the README's table is stale

Every value of deploy/helm/covid-stats/values.yaml is a row: its key, its default (JSON) and
its description, the ``# --`` comment written above it (helm-docs' convention: a comment that
starts with ``# --`` and the ``#`` lines that follow it). A map with a ``# --`` comment and no
documented key inside it is one row (``metrics.jobs``); other maps are listed key by key.
The table sits between the README's ``<!-- parameters:start -->`` and ``<!-- parameters:end
-->`` lines; tests/test_deploy.py fails when it differs from a fresh one (drift).
PyYAML (for the defaults) and the standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "covid-stats"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--check", action="store_true", help="fail when the README is stale")
    args = parser.parse_args(argv)
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    fresh = updated_readme(readme, (args.chart / "values.yaml").read_text())
    if args.check:
        if fresh != readme:
            print(f"{readme_path}: the parameter table is stale: run `make chart-readme`")
            return 1
        return 0
    readme_path.write_text(fresh)
    print(f"wrote {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
