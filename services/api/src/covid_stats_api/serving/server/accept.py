"""The worker's accept loop: every connection waiting in the listen queue, not one per turn.

uvloop's servers accept through libuv, which since 1.45 (libuv PR #3696) accepts a single
connection each time the event loop polls. A worker busy with hundreds of keep-alive
connections turns its loop every few tens of milliseconds, so it accepts a few dozen
connections a second: at 512 connections (``make bench``, 2 workers) a burst of new
connections waited in the listen queue for up to two seconds, with their first request
already sent, and made the p99. This server accepts, each time the listening socket is
readable, what is queued, up to ``ACCEPT_BATCH``, and hands each connection to the loop
with ``connect_accepted_socket``: the same transport and protocol as uvloop's own server.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable

import structlog

log = structlog.get_logger("covid_stats_api.serving.server.accept")

# At most this many connections are accepted per turn of the loop: enough to empty the
# listen queue after a burst in a few turns, small enough that one worker's turn does not
# take a whole burst from the others sharing the socket.
ACCEPT_BATCH = 64
# Out of file descriptors or memory: stop accepting this long, as asyncio's servers do
# (the connections wait in the listen queue meanwhile).
_RETRY_SECONDS = 1.0
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptServer:
    """Serves a listening socket: ``protocol_factory()`` per accepted connection. Has what
    uvicorn uses of an ``asyncio.Server``: ``close()`` and ``wait_closed()``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._ssl = ssl_context
        self._opening: set[asyncio.Task[object]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._serving = False
        sock.setblocking(False)

    def start(self) -> None:
        self._serving = True
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on. The socket stays open (its
        owner, gunicorn's worker, closes it)."""
        if not self._serving:
            return
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._loop.remove_reader(self._sock.fileno())

    async def wait_closed(self) -> None:
        """Until every connection accepted has been handed to its protocol."""
        if self._opening:
            await asyncio.wait(self._opening)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty: the next connection wakes the loop again
            except ConnectionAbortedError:
                continue  # reset while queued
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                log.error("accept_paused", error=str(exc), seconds=_RETRY_SECONDS)
                self._loop.remove_reader(self._sock.fileno())
                self._retry = self._loop.call_later(_RETRY_SECONDS, self._resume)
                return
            try:
                self._open(conn)
            except Exception:
                conn.close()
                log.exception("accepted_connection_failed")

    def _open(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(self._protocol_factory, conn, ssl=self._ssl)
        )
        self._opening.add(task)
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[object]) -> None:
        self._opening.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("accepted_connection_failed", error=repr(exc))

    def _resume(self) -> None:
        self._retry = None
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)
