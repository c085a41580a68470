"""Where a large query answer is rendered: a small pool of processes per worker, at a lower
CPU priority, so the worker's event loop never waits on them.

A worker renders an answer of more than a few hundred records (``queries.render``: a
projection or a CSV parses every record) and compresses it. In a thread of the worker, that
work held the GIL the event loop needs: with two such computations running, the loop's
wake-ups waited up to the interpreter's switch interval each, and the hot documents' p99 went
from 4 ms to 104 ms during ``make bench-queries`` (docs/performance.md, "Hostile queries").
Here the records' texts, one buffer as PostgreSQL joined them, go to one of
``QUERY_COMPUTE_SLOTS`` processes (started from a preloaded fork server on first use, niced
by ``COMPUTE_NICE``, so the kernel runs the worker first when they share a core) and the
body and its gzip body come back. The worker keeps the fetch (asyncpg: one row of two
values, never a row per record) and the cache; the process splits and parses the records,
one computation at a time, and hands its heap back to the system after each large one.

The slots bound a worker's computations (the others wait their turn in ``QueryService``), so
what they hold: at most ``QUERY_COMPUTE_SLOTS`` times one question's texts and answer, in the
worker and in its processes (docs/limits.md, "Query answers").
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from covid_stats_contract.documents import compress, etag_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from covid_stats_api.reads.queries import Query

# How much lower than the worker a computation process runs (os.nice's increment).
COMPUTE_NICE = 10
# How often a computation process checks that its worker is still there.
_WATCH_SECONDS = 1.0
_MODULE = __name__


def _watch(worker: int) -> None:
    """End this process once ``worker`` is gone. A worker killed outright (SIGKILL: the
    gunicorn timeout, the OOM killer) shuts nothing down, and nothing else would end its
    processes: each holds both ends of the pool's queues (no end of file ever comes) and the
    fork server's liveness pipe (so it waits for them in turn)."""
    while True:
        time.sleep(_WATCH_SECONDS)
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # another user's process under a reused pid: the worker is gone
            os._exit(0)


def _start(worker: int) -> None:
    """A computation process's start: a lower CPU priority than the worker's, and no metrics
    files: the process counts nothing, and a process of its own writing in the workers'
    ``PROMETHEUS_MULTIPROC_DIR`` would add its (zero) values to theirs (a ``livemin`` gauge
    would read 0). So the variable goes before the rendering code, and with it the metrics
    module, is first imported (the fork server loads only this module)."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.environ.pop("prometheus_multiproc_dir", None)
    os.nice(COMPUTE_NICE)
    threading.Thread(target=_watch, args=(worker,), name="watch-worker", daemon=True).start()
    import covid_stats_api.reads.queries  # noqa: F401 - loaded once, before the first task


Rendered = tuple[int, bytes, str, bytes]  # size, body, ETag, gzip body
T = TypeVar("T")


def rendered(query: Query, joined: bytes, max_bytes: int | None) -> Rendered:
    """(size, body, ETag, gzip body) of ``query``'s answer over the records' texts
    ``joined`` (``queries.statement``); over ``max_bytes`` (None: no limit) the body, tag
    and gzip are left out (the answer is refused: only its size counts). Raises
    ``queries.UnknownField``."""
    from covid_stats_api.reads.queries import render, split, trim_heap

    body = render(query, split(joined))
    size = len(body)
    if max_bytes is not None and size > max_bytes:
        del body
        trim_heap()
        return size, b"", "", b""
    gzip = compress(body)
    trim_heap()
    return size, body, etag_for(body), gzip


class ComputePool:
    """A worker's computation processes (started on first use, stopped with the worker)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([_MODULE])
            self._pool = ProcessPoolExecutor(
                self.processes, context, initializer=_start, initargs=(os.getpid(),)
            )
        return self._pool

    async def render(self, query: Query, joined: bytes, max_bytes: int | None) -> Rendered:
        """``rendered`` in one of the processes."""
        return await self.call(rendered, query, joined, max_bytes)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in one of the processes (a module-level function: it travels
        by name). A pool broken by a process that died (the kernel's OOM killer) is replaced
        for the next computation; this one raises ``BrokenProcessPool``."""
        pool = self._executor()
        try:
            # Submitted from a thread: a submission can start a process (the fork server's
            # reply is awaited), which must never hold up the event loop. Measured: when the
            # loop submitted, the first computations held the hot documents' p99 at 2.4 s.
            future = await asyncio.to_thread(pool.submit, function, *args)
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
