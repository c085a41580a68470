"""Throwaway local Redis and PostgreSQL servers from pip packages, for `make run` and tests.

See :mod:`devstack.servers` for the servers and :mod:`devstack.procs` for the process helpers.
"""

from devstack.servers import LocalPostgres, LocalRedis, ServerStartError

__all__ = ["LocalPostgres", "LocalRedis", "ServerStartError"]
__version__ = "0.1.0"
