"""A throwaway local PostgreSQL 16: ``initdb``/``postgres``/``psql`` from the ``pgserver`` wheel.

State in ``<state_dir>/postgres/data/`` (the cluster), output (initdb's too) in
``<state_dir>/logs/postgres.log``.

FOR LOCAL DEVELOPMENT AND TESTS ONLY: initialised with ``--auth=trust`` (anyone who can reach
127.0.0.1:<port> may log in as ``postgres`` without a password) and run with ``fsync=off``.
Never expose the port or reuse the data.

With ``password=`` every connection authenticates with SCRAM-SHA-256 (an ``hba_file`` of our
own). The ``postgres`` role's password is set at each start, before the server accepts
connections, in single-user mode and as a SCRAM verifier (:mod:`devstack.servers.scram`), so
the server never sees the password itself (nor its log, whatever statement logging is on).

PostgreSQL refuses to run as root: see :mod:`devstack.servers.as_root`.

With ``DEVSTACK_INITDB_CACHE`` set to a folder, ``initdb`` runs once there (per PostgreSQL
install and user) and each new cluster is a copy of that pristine one: the tests set it, so
a run of them makes one cluster with ``initdb`` (about 0.9 s of CPU) instead of two dozen.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs (types-psutil) in the venv

from devstack import procs
from devstack.servers.as_root import (
    RunAs,
    ensure_install_readable,
    ensure_traversable,
    pg_run_as,
    user_kwargs,
)
from devstack.servers.base import ServerProcess, check_password, stop_strays
from devstack.servers.scram import scram_sha_256_verifier
from devstack.servers.wheels import pg_bin_dir

log = logging.getLogger("devstack")

# Longest usable unix socket path on Linux is 107 bytes (sun_path is 108 with the NUL).
_MAX_SOCKET_PATH = 107
# A folder where initdb runs once and new clusters are copied from (module docstring).
INITDB_CACHE_ENV = "DEVSTACK_INITDB_CACHE"


class LocalPostgres(ServerProcess):
    """A local PostgreSQL 16 on 127.0.0.1 with database ``database``, user ``postgres``.

    ``initdb`` runs on first use (trust auth, UTF8, C locale, no fsync: dev/test only). The
    unix socket goes in the data directory when that path is short enough, else unix sockets
    are disabled (``socket_dir`` is then ``None``); clients use TCP via :attr:`url`.
    ``port=None`` picks a free port once, in the constructor; restarts reuse it.
    """

    _name = "postgres"
    _stop_signal = signal.SIGINT  # "fast shutdown": disconnects clients, then exits

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        database: str = "covid_stats",
        max_connections: int = 200,
        settings: dict[str, str] | None = None,
        *,
        password: str | None = None,
    ) -> None:
        """``settings``: more server settings (``-c name=value``), e.g. statement logging.
        ``password``: the ``postgres`` role's, then required for every connection."""
        super().__init__(state_dir, port)
        check_password(password)
        self.database = database
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.password = password
        self.root = self.state_dir / "postgres"
        self.data_dir = self.root / "data"
        self.hba_file = self.root / "pg_hba.password.conf"
        quoted_db = urllib.parse.quote(database, safe="")
        auth = f":{urllib.parse.quote(password, safe='')}" if password else ""
        self.url = f"postgresql://postgres{auth}@127.0.0.1:{self.port}/{quoted_db}"
        sock = self.data_dir / f".s.PGSQL.{self.port}"
        self.socket_dir: Path | None = (
            self.data_dir if len(os.fsencode(sock)) <= _MAX_SOCKET_PATH else None
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (``SIGINT``), ``SIGKILL`` of the process group after ``timeout`` s."""
        super().stop(timeout)

    def start(self, timeout: float = 60.0) -> None:
        """initdb on first use, start postgres, wait until it accepts connections, create the
        database if missing. No-op if already running."""
        if (begun := self._begin_start(timeout)) is None:
            return
        t0, deadline = begun
        bin_dir = pg_bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        run_as = pg_run_as()
        if run_as is not None:
            ensure_traversable(self.root)
            ensure_install_readable(bin_dir.parent)
        self._stop_leftovers(max(1.0, deadline - time.monotonic()))
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir, run_as, deadline)
        auth: list[str] = []
        if self.password is not None:
            self._set_password(bin_dir, run_as, deadline)
            auth = ["-c", f"hba_file={self.hba_file}"]
        t_init = time.monotonic()

        argv = [
            str(bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-k", str(self.socket_dir or ""),
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", f"max_connections={self.max_connections}",
            *auth,
            *(arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")),
        ]  # fmt: skip
        self._spawn(argv, signal.SIGINT, cwd=self.root, env=_pg_env(), **user_kwargs(run_as))
        self._wait_ready(self._postmaster_ready, deadline)
        t_ready = time.monotonic()
        self._create_database(bin_dir, deadline)
        log.info(
            "postgres pid %d ready at %s in %.2fs (initdb %.2fs, start %.2fs, createdb %.2fs)",
            self.pid,
            self.url,
            time.monotonic() - t0,
            t_init - t0,
            t_ready - t_init,
            time.monotonic() - t_ready,
        )

    # -- steps ------------------------------------------------------------------------------

    def _stop_leftovers(self, timeout: float) -> None:
        """Deal with a postmaster (and backends) of this data dir left by an earlier run."""
        pid_file = self.data_dir / "postmaster.pid"
        pid = _read_pid(pid_file)
        if pid is not None and procs.is_alive(pid) and self._is_our_postmaster(pid):
            log.warning("stopping leftover postmaster pid %d of %s", pid, self.data_dir)
            procs.terminate_pid(pid, timeout, signal.SIGINT)
        # Orphaned backends keep their cwd in the data dir: kill whatever is left.
        stop_strays(self.data_dir, "postgres", signal.SIGKILL, 5.0)
        # No process of this cluster is alive now. A postmaster.pid whose pid still exists (a
        # zombie not reaped yet, or a reused pid) would make postgres refuse to start.
        if pid is not None and psutil.pid_exists(pid):
            log.warning("removing stale %s (pid %d is not a live postmaster)", pid_file, pid)
            pid_file.unlink(missing_ok=True)

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            p = psutil.Process(pid)
            if p.name() != "postgres":
                return False
            return Path(p.cwd()).resolve() == self.data_dir.resolve()
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            return False

    def _initdb(self, bin_dir: Path, run_as: RunAs | None, deadline: float) -> None:
        if self.data_dir.exists():
            if any(self.data_dir.iterdir()):
                raise self._error(f"{self.data_dir} exists but is not a PostgreSQL data directory")
            self.data_dir.rmdir()
        # Build in a scratch dir and rename: a crash mid-initdb never leaves a half cluster.
        scratch = self._scratch(self.root / "data.initdb", run_as)
        if cache := os.environ.get(INITDB_CACHE_ENV):
            pristine = self._pristine(Path(cache), bin_dir, run_as, deadline)
            shutil.copytree(pristine, scratch, symlinks=True, dirs_exist_ok=True)
            if run_as is not None:
                _chown_tree(scratch, run_as)
            log.info("postgres cluster %s copied from %s", self.data_dir, pristine)
        else:
            self._run_initdb(scratch, bin_dir, run_as, deadline)
        scratch.rename(self.data_dir)

    @staticmethod
    def _scratch(path: Path, run_as: RunAs | None) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(path, run_as.uid, run_as.gid)
        return path

    def _pristine(self, cache: Path, bin_dir: Path, run_as: RunAs | None, deadline: float) -> Path:
        """The cache's cluster for this install and user, made by the first process to ask
        (the others wait for it on a lock)."""
        key = hashlib.sha256(f"{bin_dir.resolve()}\0{run_as}".encode()).hexdigest()[:16]
        pristine = cache / key / "data"
        pristine.parent.mkdir(parents=True, exist_ok=True)
        with (cache / f"{key}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (pristine / "PG_VERSION").exists():
                if run_as is not None:
                    ensure_traversable(pristine.parent)
                scratch = self._scratch(cache / key / "data.initdb", run_as)
                self._run_initdb(scratch, bin_dir, run_as, deadline)
                scratch.rename(pristine)
        return pristine

    def _run_initdb(
        self, scratch: Path, bin_dir: Path, run_as: RunAs | None, deadline: float
    ) -> None:
        argv = [
            str(bin_dir / "initdb"),
            "-D", str(scratch),
            "-U", "postgres",
            "--auth=trust",  # local dev/test only, bound to 127.0.0.1
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        env = _pg_env()
        env["TZ"] = "UTC"  # initdb writes it as the server's timezone; skips zone probing
        with self._open_log() as logf:
            logf.write(f"\n=== devstack: {shlex.join(argv)}\n".encode())
            logf.flush()
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env=env,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                    preexec_fn=procs.pdeathsig_preexec(signal.SIGTERM),
                    **user_kwargs(run_as),
                )
            except subprocess.TimeoutExpired:
                raise self._error("initdb timed out") from None
        if result.returncode != 0:
            raise self._error(f"initdb exited with code {result.returncode}")

    def _set_password(self, bin_dir: Path, run_as: RunAs | None, deadline: float) -> None:
        """Give the ``postgres`` role the password (as a SCRAM verifier) in single-user mode,
        before the server listens, and write the hba file that requires it everywhere."""
        assert self.password is not None
        self.hba_file.write_text(
            "# devstack: every connection authenticates with the password (SCRAM-SHA-256)\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        self.hba_file.chmod(0o644)  # no secret in it; the server's user must read it
        verifier = scram_sha_256_verifier(self.password)
        argv = [str(bin_dir / "postgres"), "--single", "-D", str(self.data_dir), "postgres"]
        with self._open_log() as logf:
            logf.write(b"\n=== devstack: setting the postgres role's password (single-user)\n")
            logf.flush()
            try:
                result = subprocess.run(
                    argv,
                    input=f"ALTER ROLE postgres PASSWORD '{verifier}'\n".encode(),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env=_pg_env(),
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                    preexec_fn=procs.pdeathsig_preexec(signal.SIGTERM),
                    **user_kwargs(run_as),
                )
            except subprocess.TimeoutExpired:
                raise self._error("setting the password timed out") from None
        if result.returncode != 0:
            raise self._error(f"setting the password failed (exit code {result.returncode})")

    def _postmaster_ready(self) -> bool:
        # postgres rewrites postmaster.pid on start; line 8 becomes "ready" once it accepts
        # connections. Check the pid too, so a stale file from a killed run is not trusted.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"

    def _create_database(self, bin_dir: Path, deadline: float) -> None:
        script = (
            "SELECT format('CREATE DATABASE %I', :'db') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\\gexec\n"
        )
        argv = [
            str(bin_dir / "psql"),
            "-X", "-q",
            "-v", "ON_ERROR_STOP=1",
            "-v", f"db={self.database}",
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-U", "postgres",
            "-d", "postgres",
        ]  # fmt: skip
        try:
            env = _pg_env()
            if self.password is not None:
                env["PGPASSWORD"] = self.password  # libpq's variable: not on the command line
            result = subprocess.run(
                argv,
                input=script.encode(),
                capture_output=True,
                env=env,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._error(f"creating database {self.database!r} timed out") from None
        if result.returncode != 0:
            self.kill()
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise self._error(f"creating database {self.database!r} failed: {output}")


def _chown_tree(root: Path, run_as: RunAs) -> None:
    for folder, _, files in os.walk(root):
        os.chown(folder, run_as.uid, run_as.gid)
        for name in files:
            os.chown(os.path.join(folder, name), run_as.uid, run_as.gid, follow_symlinks=False)


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(first) if first.isdigit() else None


def _pg_env() -> dict[str, str]:
    """Environment for PostgreSQL programs: no PG* settings from the caller, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env
