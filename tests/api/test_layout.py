"""The api package's layout holds: data access never imports the web or serving layers, the
ASGI layers never import the server adapter and only the adapter imports uvicorn, every
metric is defined in the one metrics module, and every HTTP answer's error body, ETag and
representation headers are built by the one HTTP module (``covid_stats_runtime.http``), and
the fast path's table of document paths comes from the app's routes, and no route or
dependency runs in FastAPI's thread pool.

Read from the source itself (the package's own files, parsed), so a new module is checked
the day it is added.
"""

from __future__ import annotations

import ast
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import prometheus_client
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

import covid_stats_api
from covid_stats_api import metrics
from covid_stats_api.api.routes import v1
from covid_stats_api.main import ROUTERS, ROUTES
from covid_stats_api.serving.asgi.fastpath import document_paths
from covid_stats_contract.documents import STATE_PLACEHOLDER, document_families
from covid_stats_runtime import http

PACKAGE = Path(covid_stats_api.__file__).parent
ROOT = Path(__file__).resolve().parents[2]
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


def test_only_the_server_adapter_imports_uvicorn_and_the_asgi_layers_not_the_server() -> None:
    """``serving/server/`` adapts uvicorn, uvicorn-worker and gunicorn: no other module of
    the package imports them; the ASGI layers (``serving/asgi/``) and what both share
    (``serving/handoff.py``) import nothing of the server's; the server imports no module
    that defines metrics (the gunicorn master loads it: see the test below) and none of the
    web or data layers."""
    serving = PACKAGE / "serving"
    server, asgi = serving / "server", serving / "asgi"
    assert modules(server), "no serving/server package"
    assert modules(asgi), "no serving/asgi package"
    servers = ("uvicorn", "uvicorn_worker", "gunicorn")
    counting = tuple(
        f"{NAME}.serving.asgi.{path.stem}"
        for path in modules(asgi)
        if any(name.startswith(f"{NAME}.metrics") for name in imported(path))
    )
    assert f"{NAME}.serving.asgi.direct" in counting
    found = []
    for path in modules(PACKAGE):
        names = imported(path)
        where = str(path.relative_to(PACKAGE))
        if not path.is_relative_to(server):
            found += [f"{where}: {n}" for n in names if n.split(".")[0] in servers]
        if path.is_relative_to(asgi) or path == serving / "handoff.py":
            found += [f"{where}: {n}" for n in names if n.startswith(f"{NAME}.serving.server")]
        if path == serving / "handoff.py":
            found += [f"{where}: {n}" for n in names if n.startswith(f"{NAME}.serving.asgi")]
        if path.is_relative_to(server):
            banned: tuple[str, ...] = (
                f"{NAME}.metrics",
                f"{NAME}.api",
                f"{NAME}.reads",
                f"{NAME}.main",
            )
            banned += counting  # the ASGI layers that import the metrics module
            found += [f"{where}: {n}" for n in names if n.startswith(banned)]
    assert found == []


def test_every_metric_is_defined_in_the_metrics_module() -> None:
    assert {"Counter", "Gauge", "Histogram"} <= METRIC_TYPES
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


def test_error_bodies_and_representation_headers_are_built_in_the_http_module() -> None:
    """Nowhere in the services or libraries but ``covid_stats_runtime.http``: a dict with an
    ``"error"`` key (an error body by hand); nowhere in the services: the header names of a
    representation (the contract's ``etag`` is a Redis field, not a header)."""
    home = Path(http.__file__).resolve()
    sources = [
        path.resolve()
        for pattern in ("services/*/src/**/*.py", "libs/*/src/**/*.py")
        for path in ROOT.glob(pattern)
    ]
    assert home in sources
    representation_headers = {b"etag", b"content-encoding", b"vary", b"cache-control"}
    found = []
    for path in sources:
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Dict) and any(
                isinstance(key, ast.Constant) and key.value == "error" for key in node.keys
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} an error body")
            in_service = path.is_relative_to(ROOT / "services")
            if (
                in_service
                and isinstance(node, ast.Constant)
                and node.value in representation_headers
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == [], "\n".join(found)


def test_the_fast_paths_table_comes_from_the_routes_and_fails_without_one() -> None:
    """Every published document's path resolves to the route that answers it; a published
    document that no route answers stops the app from starting (here: without v1's routes)."""
    paths = document_paths(ROUTES)
    templates = {route.path for route in ROUTES if isinstance(route, APIRoute)}
    for name in document_families():
        concrete = name.replace(STATE_PLACEHOLDER, "Ca")
        resolved = paths.resolve("/" + concrete)
        assert resolved is not None, name
        assert resolved[0] == concrete.lower()
        assert resolved[1] in templates
    without_v1 = [route for router in ROUTERS if router is not v1.router for route in router.routes]
    with pytest.raises(LookupError, match="no route answers"):
        document_paths(without_v1)


def _dependencies(dependant: Dependant) -> list[Dependant]:
    return [d for sub in dependant.dependencies for d in (sub, *_dependencies(sub))]


def test_every_route_runs_on_the_event_loop_no_thread_pool() -> None:
    """Every route's endpoint and every dependency it has is a coroutine: FastAPI runs a
    plain function in its thread pool, a thread hand-off per request (the per-request
    ``get_api`` was one, in every profile of the questions)."""
    routes = [route for route in ROUTES if isinstance(route, APIRoute)]
    assert routes
    plain = [
        f"{route.path}: {getattr(d.call, '__qualname__', d.call)}"
        for route in routes
        for d in (route.dependant, *_dependencies(route.dependant))
        if d.call is not None and not inspect.iscoroutinefunction(d.call)
    ]
    assert plain == [], plain


def test_the_gunicorn_master_loads_no_metrics_before_their_directory_is_set() -> None:
    """prometheus_client picks its storage when first imported, and the forked workers
    inherit that choice. gunicorn's master loads the app (``preload_app``) before any of its
    hooks run, so the config must set ``PROMETHEUS_MULTIPROC_DIR`` as it is read, before
    anything imports prometheus_client. Imported earlier, every worker counted in its own
    memory and ``/metrics`` (the master's, from the files) showed none of it."""
    script = (
        "import importlib, os, sys\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'prometheus_client':\n"
        "            print('prometheus_client with', os.environ.get('PROMETHEUS_MULTIPROC_DIR'))\n"
        "            sys.exit(0 if os.environ.get('PROMETHEUS_MULTIPROC_DIR') else 1)\n"
        "sys.meta_path.insert(0, Watch())\n"
        "conf = importlib.import_module('covid_stats_api.serving.gunicorn_conf')\n"
        "assert conf.preload_app\n"
        "module, _, name = conf.worker_class.rpartition('.')\n"
        "getattr(importlib.import_module(module), name)\n"
        "importlib.import_module('covid_stats_api.main')\n"
        "sys.exit(2)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    made = done.stdout.rpartition(" with ")[2].strip()
    if made.startswith(("/dev/shm/covid-stats-metrics-", tempfile.gettempdir())):
        shutil.rmtree(made, ignore_errors=True)  # the config's own (the master's on_exit)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_master_loads_the_app_without_collections_and_freezes_it_before_forking() -> None:
    """gunicorn_conf turns the cyclic collector off as the master reads it, and when_ready
    (after the app is loaded, before the first fork) freezes everything and turns it on: the
    loading runs no full collection and at most a library's own one or two (about 20 and a
    full one with the collector on), and the workers inherit a frozen heap."""
    script = (
        "import gc, types\n"
        "import covid_stats_api.serving.gunicorn_conf as conf\n"
        "off = not gc.isenabled()\n"
        "import covid_stats_api.main\n"
        "loading = gc.get_stats()\n"
        "conf.when_ready(types.SimpleNamespace())\n"
        "conf.on_exit(None)\n"
        "print(off, loading[1]['collections'], loading[2]['collections'],"
        " gc.isenabled(), gc.get_freeze_count())\n"
    )
    env = {**os.environ, "API_METRICS_PORT": "0"}  # when_ready starts no listener
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    off, middle, full, enabled, frozen = done.stdout.split()
    assert (off, full, enabled) == ("True", "0", "True")
    assert int(middle) <= 2
    assert int(frozen) > 10_000  # the app's objects, frozen
