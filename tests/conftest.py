"""Fixtures: real Redis, PostgreSQL and upstream servers for the whole session.

Redis and PostgreSQL are throwaway local servers (tools/devstack) unless TEST_REDIS_URL /
TEST_DATABASE_URL name servers to use instead; the tests flush and truncate them, so never
point those at data you care about. The replay upstream serves the real archive in
../shared/covidtracking when it exists, else the synthetic dataset.

`make test` runs the tests on several processes (pytest-xdist, ``-n``, ``--dist loadfile``: a
file's tests on one worker, so its module-scoped servers start once): each worker is a pytest
session of its own, so it starts its own session servers (and its own template of published
data, tests/stacks.py) and no test flushes or truncates another worker's data. Tests marked
``load`` (they apply load and count failed requests, or time a drain) never run their loads at
the same time (pytest_runtest_call); everything else runs beside them.
TEST_REDIS_URL / TEST_DATABASE_URL need one process.
`pytest tests/api/test_x.py` alone runs on one process, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import math
import os
import ssl
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import httpx._transports.default as httpx_transports
import pytest
import redis

from devstack.procs import free_port
from devstack.servers import LocalPostgres, LocalRedis
from devstack.servers.postgres_server import INITDB_CACHE_ENV
from stacks import Stack, Template, loaded_stack, migrate, published_template
from support import (
    ARCHIVE,
    RECENT,
    SUMMARY_LINES,
    ApiUrl,
    Fetcher,
    Process,
    Upstream,
    fail_fast_env,
    scratch_dir,
    start_api,
    start_fetcher,
    start_upstream,
)


def pytest_report_header() -> str:
    if ARCHIVE.is_dir():
        return f"upstream data: the real archive in {ARCHIVE}"
    return (
        f"upstream data: {ARCHIVE} is absent, so the replay upstream serves the synthetic "
        "dataset and the archive-only tests are skipped"
    )


# The figures tests measured (support.summary) travel on their test's report, as user
# properties named MEASURED: under xdist a worker's reports reach the controller, which prints
# the "measured" section; alone, the same path. _MEASURED: the lines the reports brought.
MEASURED = "measured"
_MEASURED: list[str] = []
_attached = [0]  # how many of this process's SUMMARY_LINES are on a report already


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    new = SUMMARY_LINES[_attached[0] :]
    _attached[0] = len(SUMMARY_LINES)
    if new:  # a new list: the item's own user_properties stay as they are
        report.user_properties = [*report.user_properties, *((MEASURED, line) for line in new)]
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_duration(report)
    _MEASURED.extend(str(value) for name, value in report.user_properties if name == MEASURED)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures the tests measured (support.summary), e.g. the fault scenarios'."""
    lines = _MEASURED + SUMMARY_LINES[_attached[0] :]  # and any said outside a test
    if lines:
        terminalreporter.section("measured")
        for line in lines:
            terminalreporter.write_line(line)


# httpx builds an SSL context for every Client (loading certifi's CA bundle: about 20 ms of
# CPU), and httpx.get() and the like build a Client per call: the tests' thousands of calls,
# each poll of a wait_until among them, paid it every time, for plain-HTTP requests. The
# default context (verify=True, no client certificate, the environment's CA settings as at the
# first call) is built once per test process and shared; any other is built as before.
# tests/system/test_harness.py checks that this holds for the installed httpx.
_create_ssl_context = httpx.create_ssl_context  # the transports' name for it, public
_default_ssl_context = functools.cache(_create_ssl_context)  # built at its first call


def _shared_default_ssl_context(
    verify: ssl.SSLContext | str | bool = True, cert: Any = None, trust_env: bool = True
) -> ssl.SSLContext:
    if verify is not True or cert is not None or not trust_env:
        return _create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
    return _default_ssl_context()


# The name the transports call it by (a private module: tests/system/test_harness.py checks it).
httpx_transports.create_ssl_context = _shared_default_ssl_context  # type: ignore[attr-defined]


def xdist_worker() -> str | None:
    """This process's pytest-xdist worker name (``gw0``), None when pytest runs alone."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def pytest_configure(config: pytest.Config) -> None:
    if xdist_worker() is None:
        return
    named = [v for v in ("TEST_REDIS_URL", "TEST_DATABASE_URL") if os.environ.get(v)]
    if named:  # the workers would flush and truncate each other's data
        pytest.exit(
            f"{' and '.join(named)} name one server for every xdist worker: run the tests on "
            "one process (`make test TEST_WORKERS=0`, or pytest without -n)",
            returncode=4,
        )


@contextlib.contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    with path.open("a") as file:
        fcntl.flock(file, operation)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Under xdist, a ``load`` test's call holds the run's load lock: no two loads run at
    once (each would count the other's requests as its own CPU's), but a load shares the
    cores with the other workers' tests, as a pod shares its node: it must lose no request
    there either. Holding every other worker back while a load ran (this lock's first form)
    cost more than it bought: each load waited for the other workers' phases to end, up to a
    template refresh or a browser test, with the cores idle meanwhile (``make test``: 7.4 to
    7.6 min that way, 6.9 min this way, docs/development.md)."""
    shared = run_dir(item.config) if item.get_closest_marker("load") else None
    if shared is None:
        return (yield)
    with _flock(shared / "load.lock", fcntl.LOCK_EX):
        return (yield)


# The folders of tests/, each one a part of the system and a marker of the same name
# (registered in pyproject.toml): `pytest -m api`, `make test PYTEST_ARGS="-m fetcher"`.
# tests/containers and tests/lifecycle mark their own modules (`containers`, `lifecycle`,
# deselected unless asked for).
TESTS = Path(__file__).resolve().parent
PARTS = ("contract", "api", "fetcher", "devstack", "deploy", "system")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its folder's part; under xdist, hand out the longest files first."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if folder in PARTS:
            item.add_marker(getattr(pytest.mark, folder))
    if conflicts := recent_conflicts(items):
        raise pytest.UsageError("\n".join(conflicts))
    if xdist_worker() is not None:
        items[:] = longest_files_first(items, recorded_durations())


# The fixtures that hold the whole dataset's data (the session's template, what one refresh of
# its upstream left): a test marked `recent` refreshes from the last days' upstream instead.
WHOLE_DATASET_FIXTURES = ("published_env", "template", "shared_api")


def recent_conflicts(items: Sequence[pytest.Item]) -> list[str]:
    """Why each test marked `recent` that also takes one of WHOLE_DATASET_FIXTURES cannot run
    (its upstream serves other data than the template holds): checked at collection, before
    any server starts."""
    return [
        f"{item.nodeid}: marked `recent` (its upstream serves the last days) but uses {name}, "
        "which holds the whole dataset; start from empty stores (service_env) instead"
        for item in items
        if item.get_closest_marker("recent") is not None
        for name in WHOLE_DATASET_FIXTURES
        if name in getattr(item, "fixturenames", ())
    ]


# How long each file's tests took in a `make test` run (seconds, setup to teardown, under the
# run's own contention), written by `make test-durations` (--record-durations).
DURATIONS = TESTS / "durations.json"


def recorded_durations() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def longest_files_first(items: list[pytest.Item], seconds: dict[str, float]) -> list[pytest.Item]:
    """The items grouped by file, the files that took longest in the recorded run first, a
    file not recorded yet before them all (pytest-xdist's own order, which ``make test`` turns
    off with ``--no-loadscope-reorder`` to use this one). A file is a unit of work (``--dist
    loadfile``), handed to the next free worker: longest first, a long file never starts last
    while the other workers have nothing left to run. By their count of tests, a file of a
    few long tests (``make run`` started again, the real editions refreshed, a browser) came
    last; by a hand-kept ``long`` marker, a long file left unmarked did. Every worker
    computes the same order (xdist checks that they collected the same)."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(file_of(item.nodeid), []).append(item)
    order = sorted(files, key=lambda name: -seconds.get(name, math.inf))
    return [item for name in order for item in files[name]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help=f"write how long each file's tests took to {DURATIONS.relative_to(TESTS.parent)} "
        "(`make test-durations`): the order in which xdist workers take the files",
    )


_SECONDS: dict[str, float] = {}


def _record_duration(report: pytest.TestReport) -> None:
    name = file_of(report.nodeid)
    _SECONDS[name] = _SECONDS.get(name, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With --record-durations, after a run that passed: the files it ran get their seconds
    (the others keep theirs), by the controller (under xdist the workers' reports reach it)."""
    recording = session.config.getoption("record_durations") and xdist_worker() is None
    if not recording or exitstatus != pytest.ExitCode.OK:
        return
    durations = {**recorded_durations(), **{k: round(v, 1) for k, v in _SECONDS.items()}}
    DURATIONS.write_text(json.dumps(dict(sorted(durations.items())), indent=1) + "\n")


archive_only = pytest.mark.skipif(
    not ARCHIVE.is_dir(), reason=f"the real archive {ARCHIVE} is absent"
)


@pytest.fixture(scope="session", autouse=True)
def initdb_once(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One ``initdb`` per run: every PostgreSQL cluster the tests make (their servers, and
    those of the ``make run`` they start) is a copy of one pristine cluster, made by the first
    worker to need it (devstack.servers.postgres_server, ``DEVSTACK_INITDB_CACHE``)."""
    shared = run_dir(request.config) or tmp_path_factory.getbasetemp()
    os.environ[INITDB_CACHE_ENV] = str(shared / "initdb")


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    with LocalRedis(tmp_path_factory.mktemp("redis-state")) as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    with (
        scratch_dir("test-pg") as d,
        LocalPostgres(Path(d)) as server,
    ):
        yield server.url


@pytest.fixture(scope="session")
def migrated_database_url(postgres_server_url: str) -> str:
    migrate(postgres_server_url)
    return postgres_server_url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The test Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """The test database, migrated, its data tables emptied before the test."""

    async def truncate() -> None:
        conn = await asyncpg.connect(migrated_database_url)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'schema_migrations'"
            )
            if tables:
                names = ", ".join(f'"{row["tablename"]}"' for row in tables)
                await conn.execute(f"TRUNCATE {names}")
        finally:
            await conn.close()

    asyncio.run(truncate())
    return migrated_database_url


@pytest.fixture
def empty_database_url(postgres_server_url: str) -> Iterator[str]:
    """A new, empty database (not migrated), dropped after the test."""
    name = f"t_{os.getpid()}_{free_port()}"
    admin_url = postgres_server_url

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_server_url.rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def upstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The replay upstream, with its fault-injection control API on."""
    process, upstream = start_upstream("upstream", tmp_path_factory.mktemp("upstream-logs"))
    yield upstream
    process.stop()


@pytest.fixture(scope="session")
def recent_upstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The replay upstream serving only the dataset's last RECENT_DAYS days (support.RECENT),
    with its control API on: started on the first `recent` test of the session."""
    process, upstream = start_upstream(
        "recent-upstream", tmp_path_factory.mktemp("recent-upstream-logs"), *RECENT
    )
    yield upstream
    process.stop()


@pytest.fixture
def upstream(request: pytest.FixtureRequest, upstream_server: Upstream) -> Upstream:
    """The replay upstream with no fault set and its request counters at zero: the session's,
    or for a test marked `recent` the one serving the last RECENT_DAYS days."""
    recent = request.node.get_closest_marker("recent") is not None
    served = request.getfixturevalue("recent_upstream_server") if recent else upstream_server
    served.reset()
    return served


def run_dir(config: pytest.Config) -> Path | None:
    """Under xdist, the folder every worker of this run shares (pytest-N/; each worker's
    basetemp is pytest-N/popen-gwN/); None when pytest runs alone."""
    if xdist_worker() is None:
        return None
    return Path(config.option.basetemp).parent


@pytest.fixture(scope="session")
def template(
    request: pytest.FixtureRequest,
    redis_server_url: str,
    postgres_server_url: str,
    upstream_server: Upstream,
) -> Iterator[Template]:
    """What one real ``refresh-once`` of the session upstream left in the stores, made once
    per session (under xdist once per run, and loaded by every other worker) and cloned by
    ``published_env`` and ``shared_api`` (see tests/stacks.py)."""
    with published_template(
        redis_server_url, postgres_server_url, upstream_server, shared=run_dir(request.config)
    ) as made:
        yield made


@pytest.fixture(scope="session")
def shared_api(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One api under gunicorn over a clone of the template, for the whole session: for the
    tests that only read (they must not change its stores, its settings or what it counts
    in a way another test asserts). Stores of its own: no other test's flush reaches it."""
    log_dir = tmp_path_factory.mktemp("shared-api")
    with loaded_stack(template, redis_server_url, upstream_server, log_dir) as (base, env):
        yield Stack(base, env, upstream_server, log_dir)


@pytest.fixture
def service_env(redis_url: str, database_url: str, upstream: Upstream) -> dict[str, str]:
    """Environment for the fetcher and the api, pointed at the test servers."""
    return fail_fast_env(redis_url, database_url, upstream.url)


@pytest.fixture
def published_env(
    service_env: dict[str, str], template: Template, redis_url: str
) -> Iterator[dict[str, str]]:
    """``service_env`` with the session upstream's data published, as one ``refresh-once``
    leaves it: the template cloned into the test's Redis database and into a PostgreSQL
    database of the test's own (``DATABASE_URL``; dropped after). Not for a test marked
    `recent` (``recent_conflicts``)."""
    with template.clone(redis_url) as database_url:
        yield {**service_env, "DATABASE_URL": database_url}


@pytest.fixture
def private_redis() -> Iterator[LocalRedis]:
    """A Redis server of the test's own, which it may stop and start (outages)."""
    with (
        scratch_dir("test-redis") as d,
        LocalRedis(Path(d)) as server,
    ):
        yield server


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL server of the test's own, which it may stop and start."""
    with (
        scratch_dir("test-pg") as d,
        LocalPostgres(Path(d)) as server,
    ):
        migrate(server.url)
        yield server


@pytest.fixture
def fetcher_factory(tmp_path: Path) -> Iterator[Callable[..., Fetcher]]:
    """Starts `stats-fetcher run` processes with a given environment; stops them after."""
    started: list[Fetcher] = []

    def start(env: dict[str, str], name: str = "fetcher", token: bool = True) -> Fetcher:
        fetcher = start_fetcher(env, tmp_path, name, token)
        started.append(fetcher)
        return fetcher

    yield start
    for fetcher in started:
        fetcher.process.stop()


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ApiUrl]]:
    """Starts the api under gunicorn (2 workers) with a given environment; stops it after."""
    started: list[Process] = []

    def start(env: dict[str, str]) -> ApiUrl:
        process, base = start_api(env, tmp_path)
        started.append(process)
        return base

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """tests/deploy: every value set of the chart rendered once (deploy_support.Rendered), and
    written to a file for the file-based tools. Imported here, not at the top: only the deploy
    suite needs helm."""
    from deploy_support import VALUE_SETS, render, values_file

    folder = tmp_path_factory.mktemp("renders")
    result: dict[str, tuple[Any, Path]] = {}
    for value_set in VALUE_SETS:
        rendered = render(values_file(value_set))
        path = folder / f"{value_set}.yaml"
        path.write_text(rendered.text)
        result[value_set] = (rendered, path)
    return result
