"""Small, general process helpers for the local dev stack (Linux only).

They are used by :mod:`devstack.servers` and are meant to be reused by the ``make run``
supervisor for its other children:

* :func:`free_port` picks a free TCP port on 127.0.0.1.
* :func:`wait_until` polls a condition with a deadline (no bare sleeps in callers).
* :func:`terminate` stops a :class:`subprocess.Popen` child: signal, wait, ``SIGKILL`` fallback.
* :func:`terminate_pid` does the same for a process that is not our child (found via a pid file).
* :func:`set_pdeathsig` / :func:`pdeathsig_preexec` are ``preexec_fn`` callables that make a
  child die when its parent dies.

Typical child start::

    subprocess.Popen(argv, start_new_session=True, preexec_fn=pdeathsig_preexec())

``start_new_session=True`` puts the child in its own session and process group, so a terminal
Ctrl-C reaches only the supervisor, which then stops its children in order; it also lets
:func:`terminate` kill the whole group (the child and its own children) as a last resort.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs (types-psutil) in the venv

__all__ = [
    "find_processes",
    "free_port",
    "is_alive",
    "kill",
    "pdeathsig_preexec",
    "set_pdeathsig",
    "tail",
    "terminate",
    "terminate_pid",
    "wait_until",
]

_PR_SET_PDEATHSIG = 1

# Loaded once, in the parent: preexec_fn runs between fork and exec, where loading a library
# (dlopen, malloc under a lock another thread may hold) is best avoided.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The port is only reserved until this function returns, so another process may take it
    before the caller binds it; good enough for local dev/test servers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Call ``predicate`` until it returns true, at most ``timeout`` seconds.

    The predicate is always called at least once, and once more at the deadline. Exceptions
    it raises propagate, so a predicate can abort the wait early (for example when the
    process being waited on has exited). Raises :class:`TimeoutError` naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, remaining))


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn``: have the kernel send ``sig`` to this process when its parent dies.

    Linux only. Caveats:

    * "Parent" is the *thread* that forked: start children from a long-lived thread (the main
      thread), not from a short-lived worker thread, or they are signalled when it exits.
    * The setting is cleared by a later change of effective/filesystem uid or gid, and by
      exec of a set-uid/set-gid binary. :class:`subprocess.Popen` applies ``user=``/``group=``
      *before* calling ``preexec_fn``, so it survives a ``user=`` switch (checked empirically).
    * If the parent is already dead when this runs the signal never comes; use
      :func:`pdeathsig_preexec` to close that race.
    """
    if _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")


def pdeathsig_preexec(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """Return a ``preexec_fn`` that calls :func:`set_pdeathsig` and closes its race.

    Create it in the process that spawns the child (it remembers that pid): if the parent has
    already died before the ``prctl`` call, the child signals itself instead of living on.
    """
    parent = os.getpid()

    def _preexec() -> None:
        set_pdeathsig(sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return _preexec


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited, not yet reaped process)."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return status != str(psutil.STATUS_ZOMBIE)


def _signal_group_or_process(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            # Only signal a group that this process leads (started with start_new_session=True
            # or process_group=0): never signal the caller's own group by accident.
            try:
                leads_group = os.getpgid(pid) == pid
            except ProcessLookupError:
                leads_group = False
            if leads_group:
                os.killpg(pid, sig)
                return
        os.kill(pid, sig)


def terminate(
    proc: subprocess.Popen[Any],
    timeout: float = 10.0,
    sig: int = signal.SIGTERM,
    *,
    kill_group: bool = True,
) -> int:
    """Stop a child process: send ``sig``, wait up to ``timeout`` s, then ``SIGKILL``.

    ``sig`` goes to the process only (it decides how to shut down its own children). If it is
    still running at the deadline, ``SIGKILL`` goes to its whole process group when
    ``kill_group`` is true and it leads one (``start_new_session=True``), else to the process.
    Idempotent: a process that already exited is just reaped. Returns the exit code
    (negative signal number when killed by a signal).
    """
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    # The child is not reaped yet, so its pid (= its group id) cannot have been reused.
    _signal_group_or_process(proc.pid, signal.SIGKILL, kill_group)
    return proc.wait(timeout=max(timeout, 5.0))


def kill(proc: subprocess.Popen[Any], *, kill_group: bool = True) -> int:
    """``SIGKILL`` a child (and its process group, see :func:`terminate`) and reap it."""
    if proc.poll() is not None:
        return proc.returncode
    _signal_group_or_process(proc.pid, signal.SIGKILL, kill_group)
    return proc.wait(timeout=10.0)


def terminate_pid(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop a process that need not be our child (for example a leftover from a crashed run).

    Sends ``sig``, waits up to ``timeout`` s for it to exit, then ``SIGKILL``s it together with
    the descendants it had. A zombie counts as exited (it may be reaped late by init).
    Raises :class:`TimeoutError` if the process survives even ``SIGKILL``.
    """
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
    try:
        wait_until(lambda: not is_alive(pid), timeout, what=f"pid {pid} to exit after {sig!s}")
        return
    except TimeoutError:
        pass
    for p in [proc, *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    wait_until(lambda: not is_alive(pid), 5.0, what=f"pid {pid} to exit after SIGKILL")


def find_processes(cwd: Path, name: str | None = None) -> list[psutil.Process]:
    """Live processes whose working directory is ``cwd`` (and whose name is ``name``).

    Servers that chdir into their data directory (redis ``--dir``, postgres and all its
    backends) can be found this way even without a pid file. Processes whose cwd we may not
    read (other users' when not root) are skipped.
    """
    target = os.path.realpath(cwd)
    found = []
    for p in psutil.process_iter(["name"]):
        if name is not None and p.info["name"] != name:
            continue
        try:
            if p.cwd() == target and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def tail(path: Path, lines: int = 40, since: int = 0, max_bytes: int = 64 * 1024) -> str:
    """Return the last ``lines`` lines of a text file, from byte offset ``since`` on.

    Returns '' if the file does not exist. Reads at most the last ``max_bytes`` bytes.
    """
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(since, size - max_bytes, 0))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
