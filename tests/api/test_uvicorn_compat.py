"""The internals the api relies on, checked against the installed uvicorn, uvicorn-worker and
redis-py: an upgrade that renames or drops one fails here, naming it, instead of switching
direct answers (or a pool gauge) off without a word.

The lists are the modules' own (``uvicorn_adapter.UVICORN_INTERNALS``,
``UVICORN_SIGNATURES``, ``UVICORN_WORKER_SERVE``, ``metrics.REDIS_INTERNALS``); the tests
below also check, from the modules' source, that they use nothing of uvicorn's or redis-py's
that is not listed.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import textwrap
from functools import cache
from importlib.metadata import version
from pathlib import Path

import pytest
import uvicorn_worker
from redis.asyncio import BlockingConnectionPool
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from covid_stats_api import metrics
from covid_stats_api.serving import handoff
from covid_stats_api.serving.server import uvicorn_adapter as adapter
from covid_stats_runtime import protocol as shared_protocol

_DISTRIBUTIONS = {"uvicorn": "uvicorn", "uvicorn_worker": "uvicorn-worker", "redis": "redis"}


def _installed(cls: type) -> str:
    package = cls.__module__.split(".")[0]
    return f"{cls.__module__}.{cls.__qualname__} of {package} {version(_DISTRIBUTIONS[package])}"


@cache
def members(cls: type) -> frozenset[str]:
    """What an instance of ``cls`` has: its class's attributes and methods, and every
    attribute that the methods of the class and its bases assign on ``self``."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # a class without Python source (asyncio.Protocol)
            continue
        for node in ast.walk(ast.parse(source)):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if (
                        isinstance(part, ast.Attribute)
                        and isinstance(part.value, ast.Name)
                        and part.value.id == "self"
                    ):
                        names.add(part.attr)
    return frozenset(names)


INTERNALS = [
    pytest.param(cls, name, id=f"{cls.__name__}.{name}")
    for cls, names in adapter.UVICORN_INTERNALS.items()
    for name in names
]


@pytest.mark.parametrize(("cls", "name"), INTERNALS)
def test_every_internal_the_adapter_uses_is_in_the_installed_uvicorn(cls: type, name: str) -> None:
    assert name in members(cls), f"{name} is gone from {_installed(cls)}"


@pytest.mark.parametrize("key", sorted(adapter.UVICORN_SIGNATURES))
def test_the_methods_the_adapter_overrides_or_calls_take_the_parameters_it_assumes(
    key: str,
) -> None:
    cls, name, expected = adapter.UVICORN_SIGNATURES[key]
    method = getattr(cls, name, None)
    assert method is not None, f"{name} is gone from {_installed(cls)}"
    found = tuple(inspect.signature(method).parameters)
    assert found == expected, f"{name} of {_installed(cls)} takes {found}, not {expected}"


def test_the_protocol_still_starts_every_request_through_the_hook() -> None:
    """The guard's own check (what turns direct answers off at start-up) finds nothing
    missing in the installed uvicorn, and each method named as calling the hook does, in
    its source."""
    assert adapter.direct_answer_hooks_missing() is None
    cls = HttpToolsProtocol
    hook = adapter.UVICORN_SIGNATURES["hook"][1]
    for caller in adapter.HOOK_CALLERS:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, caller))))
        called = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert hook in called, f"{caller} of {_installed(cls)} no longer calls {hook}"


def _body(function: object) -> list[ast.stmt]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    definition = tree.body[0]
    assert isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef))
    body = definition.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return body


def test_uvicorn_workers_serve_is_the_one_the_adapter_copies() -> None:
    """``DrainingUvicornWorker._serve`` replaces uvicorn-worker's: the installed one's body
    is, statement for statement, the one the copy was made from (``UVICORN_WORKER_SERVE``),
    and the copy ends with the same steps once its server is built."""
    upstream = uvicorn_worker.UvicornWorker
    expected = ast.parse(textwrap.dedent(adapter.UVICORN_WORKER_SERVE)).body
    installed = _body(upstream._serve)
    assert [ast.dump(s) for s in installed] == [ast.dump(s) for s in expected], (
        f"_serve changed in {_installed(upstream)}: compare DrainingUvicornWorker._serve with it"
    )
    ours = _body(adapter.DrainingUvicornWorker._serve)
    tail = len(expected) - 2  # after `self.config.app = ...` and `server = Server(...)`
    assert [ast.dump(s) for s in ours[-tail:]] == [ast.dump(s) for s in expected[-tail:]]


# -- the adapter uses nothing of theirs that is not listed -----------------------------------


def _module_tree(module: object) -> ast.Module:
    path = Path(inspect.getfile(module))  # type: ignore[arg-type]
    return ast.parse(path.read_text(), str(path))


def _defined_here(tree: ast.Module) -> set[str]:
    """Names the module defines itself: functions, methods, class attributes, and the
    attributes it assigns on ``self``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name):
                        if part.value.id == "self":
                            names.add(part.attr)
                    elif isinstance(part, ast.Name):
                        names.add(part.id)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def unlisted_uses(tree: ast.Module, theirs: set[str], listed: set[str], own: set[str]) -> list[str]:
    """Uses in ``tree`` of a name ``theirs`` that ``listed`` does not name: an attribute read
    or written, a method defined (an override), or a keyword passed. A public name that our
    own code (``own``) defines too (``answer.body``) cannot be told apart from theirs without
    types, and passes; a private one of theirs never does, nor a private name that is
    neither listed nor our own."""
    found = []
    for node in ast.walk(tree):
        uses: list[str] = []
        if isinstance(node, ast.Attribute):
            uses.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            uses.append(node.name)
        elif isinstance(node, ast.keyword) and node.arg is not None and _private(node.arg):
            uses.append(node.arg)
        for name in uses:
            if name in listed or name.startswith("__"):
                continue
            private_of_theirs = _private(name) and name in theirs
            if private_of_theirs or ((name in theirs or _private(name)) and name not in own):
                found.append(f"line {getattr(node, 'lineno', 0)}: {name}")
    return sorted(found, key=lambda use: int(use.split()[1].rstrip(":")))


def test_the_adapter_uses_no_internal_of_uvicorns_that_is_not_listed() -> None:
    """Every attribute, override and private keyword of uvicorn's (or uvicorn-worker's) in
    the adapter's source is in ``UVICORN_INTERNALS`` or ``UVICORN_SIGNATURES``; so is every
    private name it uses that it does not define itself."""
    tree = _module_tree(adapter)
    listed = {name for names in adapter.UVICORN_INTERNALS.values() for name in names}
    listed |= {name for _, _, params in adapter.UVICORN_SIGNATURES.values() for name in params}
    listed |= {name for _, name, _ in adapter.UVICORN_SIGNATURES.values()}
    theirs = set().union(*(members(cls) for cls in adapter.UVICORN_INTERNALS))
    # What uvicorn's classes share with everything (object's, asyncio.Protocol's) is not
    # theirs; our own names: the adapter's, and those of what it shares with the app.
    theirs -= set(dir(object)) | set(dir(asyncio.Protocol))
    own = _defined_here(tree) | _defined_here(_module_tree(handoff))
    unlisted = unlisted_uses(tree, theirs, listed, own)
    assert not unlisted, "not in UVICORN_INTERNALS: " + ", ".join(unlisted)


def test_the_shared_protocol_uses_no_internal_of_uvicorns_that_is_not_listed() -> None:
    """The same for the limited protocol the adapter shares with the fetcher
    (``covid_stats_runtime.protocol``): what it uses is in its own list, which the adapter's
    includes (so each is checked against the installed uvicorn above)."""
    tree = _module_tree(shared_protocol)
    internals = shared_protocol.UVICORN_INTERNALS
    listed = {name for names in internals.values() for name in names}
    listed |= {
        name for _, _, params in shared_protocol.UVICORN_SIGNATURES.values() for name in params
    }
    listed |= {name for _, name, _ in shared_protocol.UVICORN_SIGNATURES.values()}
    theirs = set().union(*(members(cls) for cls in internals))
    theirs -= set(dir(object)) | set(dir(asyncio.Protocol))
    unlisted = unlisted_uses(tree, theirs, listed, _defined_here(tree))
    assert not unlisted, "not in covid_stats_runtime.protocol.UVICORN_INTERNALS: " + ", ".join(
        unlisted
    )
    for cls, names in internals.items():
        assert set(names) <= set(adapter.UVICORN_INTERNALS[cls]), cls
    assert set(shared_protocol.UVICORN_SIGNATURES.items()) <= set(
        adapter.UVICORN_SIGNATURES.items()
    )


def test_the_adapter_check_sees_an_unlisted_internal() -> None:
    """The scan above finds a private name of uvicorn's the list leaves out."""
    tree = ast.parse("def f(p):\n    p._unset_keepalive_if_required()\n    p.flow.read_paused\n")
    theirs = set(members(HttpToolsProtocol)) | set(members(FlowControl))
    assert unlisted_uses(tree, theirs, {"flow"}, {"f", "p"}) == [
        "line 2: _unset_keepalive_if_required",
        "line 3: read_paused",
    ]


# -- redis-py --------------------------------------------------------------------------------


REDIS = [
    pytest.param(path, name, id=f"{path.rpartition('.')[2]}.{name}")
    for path, names in metrics.REDIS_INTERNALS.items()
    for name in names
]


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type)
    return cls


@pytest.mark.parametrize(("path", "name"), REDIS)
def test_every_redis_internal_the_metrics_use_is_in_the_installed_redis(
    path: str, name: str
) -> None:
    cls = _class(path)
    method = getattr(cls, name, None)
    assert callable(method), f"{name} is gone from {_installed(cls)}"
    assert not getattr(method, "__isabstractmethod__", False), f"{name} is abstract in {path}"


def test_the_pool_the_api_builds_counts_its_connections_in_use() -> None:
    """The pool class the stores build is the one listed, and the listed call answers on it
    (no connection made: an unused pool has none in use)."""
    assert any(_class(path) is BlockingConnectionPool for path in metrics.REDIS_INTERNALS)
    pool = BlockingConnectionPool.from_url("redis://127.0.0.1:1/0", max_connections=2)
    assert list(pool._get_in_use_connections()) == []


def test_the_metrics_module_uses_no_private_name_of_redis_that_is_not_listed() -> None:
    tree = _module_tree(metrics)
    listed = {name for names in metrics.REDIS_INTERNALS.values() for name in names}
    theirs = set().union(*(members(_class(path)) for path in metrics.REDIS_INTERNALS))
    own = _defined_here(tree)
    private_theirs = {name for name in theirs if _private(name)}
    unlisted = unlisted_uses(tree, private_theirs, listed, own)
    assert not unlisted, "not in REDIS_INTERNALS: " + ", ".join(unlisted)
