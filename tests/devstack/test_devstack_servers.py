"""Real local Redis / PostgreSQL servers from tools/devstack (no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
import pytest
import redis

from devstack import LocalPostgres, LocalRedis, ServerStartError
from devstack.procs import is_alive, wait_until
from devstack.servers import pg_bin_dir
from devstack.servers.postgres_server import INITDB_CACHE_ENV

pytestmark = [pytest.mark.timeout(60), pytest.mark.unit]  # unit: `make test-fast`


def _server_pids(directory: Path, name: str) -> list[int]:
    """Live processes called ``name`` working in ``directory`` (servers chdir to their dir)."""
    target = os.path.realpath(directory)
    pids = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] != name:
            continue
        try:
            if p.cwd() == target and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _pg(url: str, *statements: str) -> list[Any]:
    """Run statements on one connection; return the rows of the last one."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[Any] = []
            for sql in statements:
                rows = await conn.fetch(sql)
            return rows
        finally:
            await conn.close()

    return asyncio.run(run())


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)


# --------------------------------------------------------------------------------- redis


def test_redis_start_stop_restart_same_port(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path)
    with server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = _redis(server.url)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == "v"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.close()
        first_pid = server.pid
    assert not is_alive(first_pid)
    assert _server_pids(tmp_path / "redis", "redis-server") == []
    server.stop()  # idempotent

    server.start()
    try:
        assert server.pid != first_pid
        client = _redis(server.url)
        assert client.ping()
        assert client.get("k") is None  # no persistence
        client.close()
        server.kill()
        assert not is_alive(server.pid)
        server.start()  # after a crash too
        assert _redis(server.url).ping()
    finally:
        server.stop()
    assert _server_pids(tmp_path / "redis", "redis-server") == []


def test_redis_port_in_use_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = LocalRedis(tmp_path, port=blocker.getsockname()[1])
        expected = r"(?s)exited with code 1.*Address already in use"
        with pytest.raises(ServerStartError, match=expected):
            server.start(timeout=10)
    assert not server.is_running()


def test_redis_leftover_server_of_same_dir_is_replaced(tmp_path: Path) -> None:
    first = LocalRedis(tmp_path)
    first.start()
    second = LocalRedis(tmp_path, port=first.port)
    try:
        second.start()
        assert not is_alive(first.pid)
        assert _redis(second.url).ping()
    finally:
        second.stop()
        first.stop()


# ------------------------------------------------------------------------------ postgres


def _initdb_runs(pg: LocalPostgres) -> int:
    """How many times ``initdb`` ran for ``pg``'s cluster (its log says each time)."""
    return pg.log_path.read_text().count(f"{pg_bin_dir() / 'initdb'} ")


def test_postgres_lifecycle_keeps_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INITDB_CACHE_ENV, raising=False)  # initdb itself, as `make run` does
    pg = LocalPostgres(tmp_path, max_connections=50)
    data_dir = tmp_path / "postgres" / "data"
    pg.start()
    try:
        assert _initdb_runs(pg) == 1
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/covid_stats"
        if os.geteuid() == 0:
            assert psutil.Process(pg.pid).uids().real != 0, "postgres must not run as root"
        rows = _pg(
            pg.url,
            "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t VALUES (1, 'one')",
            "SELECT current_database() AS db, current_setting('max_connections') AS mc,"
            " current_setting('fsync') AS fsync, current_setting('server_encoding') AS enc",
        )
        assert dict(rows[0]) == {"db": "covid_stats", "mc": "50", "fsync": "off", "enc": "UTF8"}
        first_pid = pg.pid
        pg.stop()
        assert not is_alive(first_pid)
        assert _server_pids(data_dir, "postgres") == []
        pg.stop()  # idempotent

        pg.start()  # same port, same data dir
        assert _pg(pg.url, "SELECT v FROM t WHERE id = 1")[0]["v"] == "one"
        # A client is connected (busy) during the crash: its backend must not survive it.
        client = subprocess.Popen(
            [str(pg_bin_dir() / "psql"), "-X", "-d", pg.url, "-c", "SELECT pg_sleep(60)"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        busy = "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
        wait_until(lambda: _pg(pg.url, busy)[0]["n"] == 1, 10, what="the busy client")
        pg.kill()
        assert not is_alive(pg.pid)
        assert client.wait(timeout=10) != 0
        wait_until(lambda: _server_pids(data_dir, "postgres") == [], 10, what="backends to go away")
        assert (data_dir / "postmaster.pid").exists()  # stale lock file left by the crash

        pg.start()
        assert _pg(pg.url, "SELECT v FROM t WHERE id = 1")[0]["v"] == "one"
    finally:
        pg.stop()
    assert _server_pids(data_dir, "postgres") == []


def test_with_an_initdb_cache_each_cluster_is_a_copy_of_one_initdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(INITDB_CACHE_ENV, str(cache))
    first, second = LocalPostgres(tmp_path / "a"), LocalPostgres(tmp_path / "b")
    with first, second:
        # Two clusters of their own, each owned by the server's user.
        _pg(first.url, "CREATE TABLE only_in_first (id int)")
        tables = "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'only_in_first'"
        assert _pg(second.url, tables)[0]["n"] == 0
        for pg in (first, second):
            owner = psutil.Process(pg.pid).uids().real
            assert {path.stat().st_uid for path in pg.data_dir.rglob("*")} == {owner}
    # initdb ran once, in the cache, logged by the first; the second's cluster is a copy.
    assert (_initdb_runs(first), _initdb_runs(second)) == (1, 0)
    assert [path.parent.name for path in cache.glob("*/data/PG_VERSION")] == ["data"]


def test_postgres_live_leftover_postmaster_is_stopped(tmp_path: Path) -> None:
    first = LocalPostgres(tmp_path, database="other db")  # needs quoting
    first.start()
    second = LocalPostgres(tmp_path, port=first.port, database="other db")
    try:
        second.start()  # finds first's live postmaster in postmaster.pid and stops it
        assert not is_alive(first.pid)
        assert second.url.endswith("/other%20db")
        assert _pg(second.url, "SELECT current_database() AS db")[0]["db"] == "other db"
    finally:
        second.stop()
        first.stop()
    assert _server_pids(tmp_path / "postgres" / "data", "postgres") == []


def test_postgres_stale_pid_file_naming_an_unrelated_live_process(tmp_path: Path) -> None:
    """After a crash the pid in postmaster.pid may belong to a new, unrelated process of the
    same user (pid reuse, or a zombie not reaped yet); postgres alone would refuse to start."""
    pg = LocalPostgres(tmp_path)
    pg.start()
    pg.kill()
    pid_file = tmp_path / "postgres" / "data" / "postmaster.pid"
    owner = pid_file.stat()
    as_root = os.geteuid() == 0
    unrelated = subprocess.Popen(
        ["sleep", "60"],
        user=owner.st_uid if as_root else None,
        group=owner.st_gid if as_root else None,
    )
    try:
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(unrelated.pid), *lines[1:]]) + "\n")
        pg.start()
        assert is_alive(unrelated.pid), "an unrelated process must not be touched"
        assert _pg(pg.url, "SELECT 1 AS one")[0]["one"] == 1
    finally:
        pg.stop()
        unrelated.kill()
        unrelated.wait()


# -------------------------------------------------------------------------- crash safety

_OWNER_SCRIPT = """
import json, signal, sys
from pathlib import Path
from devstack import LocalPostgres, LocalRedis

state, out = Path(sys.argv[1]), Path(sys.argv[2])
r = LocalRedis(state)
r.start()
p = LocalPostgres(state)
p.start()
info = {"redis_pid": r.pid, "redis_port": r.port, "pg_pid": p.pid, "pg_port": p.port}
out.with_suffix(".tmp").write_text(json.dumps(info))
out.with_suffix(".tmp").rename(out)
signal.pause()
"""


def test_servers_die_with_their_owner_and_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "owner.json"
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT, str(state), str(out)],
        stderr=subprocess.PIPE,
    )

    def started() -> bool:
        if owner.poll() is not None:
            stderr = owner.stderr.read().decode() if owner.stderr else ""
            raise AssertionError(f"owner exited with {owner.returncode}:\n{stderr}")
        return out.exists()

    try:
        wait_until(started, 45, what="the owner process to start both servers")
        info = json.loads(out.read_text())
        assert is_alive(info["redis_pid"])
        assert is_alive(info["pg_pid"])
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        if owner.stderr:
            owner.stderr.close()

    wait_until(
        lambda: not is_alive(info["redis_pid"]) and not is_alive(info["pg_pid"]),
        15,
        what="servers to exit after their owner was SIGKILLed",
    )
    wait_until(
        lambda: _server_pids(state / "postgres" / "data", "postgres") == [],
        10,
        what="postgres backends to exit",
    )

    r = LocalRedis(state, port=info["redis_port"])
    pg = LocalPostgres(state, port=info["pg_port"])
    try:
        r.start()
        pg.start()
        assert _redis(r.url).ping()
        assert _pg(pg.url, "SELECT 1 AS one")[0]["one"] == 1
    finally:
        pg.stop()
        r.stop()
