"""What the local servers share: one child process, its log, start/stop/kill.

A server runs as a foreground child process on TCP 127.0.0.1 only, in its own session (a
terminal Ctrl-C reaches only the supervisor) and with a parent-death signal (it goes away if
the owning Python process dies, even by SIGKILL). Its output is appended to
``<state_dir>/logs/<name>.log`` across restarts; a failed start raises
:class:`ServerStartError` with the tail of that log.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

from devstack import procs
from devstack.servers.redact import redact_url

log = logging.getLogger("devstack")


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


def check_password(password: str | None) -> None:
    if password is not None and not (password.isascii() and password.isprintable()):
        raise ValueError("passwords must be printable ASCII")
    if password is not None and ('"' in password or "\\" in password or not password):
        raise ValueError('passwords must be non-empty and hold no " or \\')


class ServerProcess:
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


def stop_strays(directory: Path, name: str, sig: int, timeout: float) -> None:
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
