"""The api package's layout holds: data access never imports the web or serving layers, and
every metric is defined in the one metrics module.

Read from the source itself (the package's own files, parsed), so a new module is checked
the day it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prometheus_client

import covid_stats_api
from covid_stats_api import metrics

PACKAGE = Path(covid_stats_api.__file__).parent
NAME = covid_stats_api.__name__
# The metric classes prometheus_client exports (Counter, Gauge, Histogram, ...).
METRIC_TYPES = {
    name
    for name in prometheus_client.__all__
    if isinstance(getattr(prometheus_client, name), type)
    and issubclass(getattr(prometheus_client, name), prometheus_client.metrics.MetricWrapperBase)
}


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_data_access_imports_neither_the_web_nor_the_serving_layer() -> None:
    reads = PACKAGE / "reads"
    assert modules(reads), "no reads/ package"
    above = (f"{NAME}.api", f"{NAME}.serving", f"{NAME}.main")
    offending = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in imported(path) if name.startswith(above)
        )
        for path in modules(reads)
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_every_metric_is_defined_in_the_metrics_module() -> None:
    assert METRIC_TYPES >= {"Counter", "Gauge", "Histogram"}
    home = Path(metrics.__file__)
    defined_elsewhere = []
    defined_here = 0
    for path in modules(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called not in METRIC_TYPES:
                continue
            if path == home:
                defined_here += 1
            else:
                defined_elsewhere.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {called}")
    assert defined_elsewhere == []
    # The metrics module does define them: the walk above sees metric constructions.
    assert defined_here >= len(
        [
            v
            for v in vars(metrics).values()
            if isinstance(v, prometheus_client.metrics.MetricWrapperBase)
        ]
    )
