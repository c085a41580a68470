"""Where a large query answer is fetched and rendered: a small pool of processes per worker,
at a lower CPU priority, so the worker's event loop never waits on them.

A worker renders an answer of more than a few hundred records (``queries.render``: a
projection or a CSV parses every record) and compresses it. In a thread of the worker, that
work held the GIL the event loop needs: with two such computations running, the loop's
wake-ups waited up to the interpreter's switch interval each, and the hot documents' p99 went
from 4 ms to 104 ms during ``make bench-queries`` (docs/performance.md, "Hostile queries").
Fetching the records' texts in the worker held its loop too: up to 13.5 MB arrive per
question (the whole daily series, for a projection a few hundred KB long), and receiving,
decoding and handing them on held the loop for 15-25 ms each time (a loop-lag probe during
the bench: the worker's own CPU, in uvloop's and asyncpg's C code, and the pool's feeder
thread pickling the buffer).

So one of ``QUERY_COMPUTE_SLOTS`` processes (started from a preloaded fork server on first
use, at idle CPU priority, ``_idle``: a worker that wakes takes the CPU from it at once)
does the whole computation: it fetches the texts over a PostgreSQL connection of its own
(``ProcessDatabase``: opened on first use, with the worker's settings; counted in the
connection budget), splits and parses the records, renders and compresses the body, stores
the answer in Redis where the worker's ``AnswerCache`` says (``FillTarget``; ``ProcessRedis``:
a connection of its own, so the answer's megabytes never cross the worker's), and hands its
heap back to the system after each large one. The worker gets back the answer (body, ETag,
gzip body: at most ``QUERY_ANSWER_MAX_BYTES`` and its gzip) to send, and keeps it in memory.

The slots bound a worker's computations (the others wait their turn in ``QueryService``), so
what they hold: at most ``QUERY_COMPUTE_SLOTS`` times one question's texts and answer, in the
processes, and their answers in the worker (docs/limits.md, "Query answers").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from covid_stats_contract.documents import CONTENT_TYPES, compress, etag_for
from covid_stats_runtime.stores import DATABASE_ERRORS

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

    from covid_stats_api.reads.queries import Query
    from covid_stats_contract.snapshots import CachedAnswer, FillTarget, SnapshotStore

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


def _idle() -> None:
    """Run only when the worker (and the rest of the pod) leaves the CPU idle: the scheduler's
    ``SCHED_IDLE`` policy, which a process may always take for itself. A worker waking for a
    hot read preempts an idle-policy process at once, wherever they share a CPU group (a
    container's cgroup; a host's session, ``autogroup``). A nice value does not: the woken
    worker waited for its turn, a few milliseconds (``make bench-queries --apart``, api on
    one CPU: the hot documents' paced p99 during the questions 9.8 ms niced in a CPU group
    of their own, 5.8 ms idle in the worker's; docs/performance.md, "Hostile queries").
    ``COMPUTE_NICE`` stays as the fallback, where the policy is refused.

    What it cannot do: keep a worker that is already running on the CPU. The kernel's fair
    scheduler (EEVDF, Linux 6.6 and later) picks the eligible task, and a computation placed
    behind the worker (it was owed time) is eligible: now and then it runs until the next
    tick (4 ms at 250 Hz), traced while the worker waited (docs/performance.md, "The
    scheduler's tick"). No priority a process may take for itself changes that; only a CPU of
    their own keeps the computations out of the hot reads' way."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _start(worker: int) -> None:
    """A computation process's start: idle CPU priority (and a lower nice), and no metrics
    files: the process counts nothing, and a process of its own writing in the workers'
    ``PROMETHEUS_MULTIPROC_DIR`` would add its (zero) values to theirs (a ``livemin`` gauge
    would read 0). So the variable goes before the rendering code, and with it the metrics
    module, is first imported (the fork server loads only this module)."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.environ.pop("prometheus_multiproc_dir", None)
    os.nice(COMPUTE_NICE)
    _idle()
    threading.Thread(target=_watch, args=(worker,), name="watch-worker", daemon=True).start()
    import covid_stats_api.reads.queries  # noqa: F401 - loaded once, before the first task


# What a computation answers: the number of records, the body's size, the body, ETag and
# gzip body (empty when over the size limit: only the size counts then), and, when it stored
# the answer in Redis itself (``FillTarget``), the answers that store pushed out (None: not
# stored: no target, nothing to store, or Redis failed; the worker stores it then).
Answered = tuple[int, int, bytes, str, bytes, int | None]
T = TypeVar("T")
# The name a computation process's connections show PostgreSQL (pg_stat_activity) and Redis
# (CLIENT LIST).
APPLICATION_NAME = "covid-stats-api-compute"


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    """The process's event loop, for its PostgreSQL and Redis connections (one task at a
    time: the process runs one computation at a time)."""
    return asyncio.new_event_loop()


class ProcessDatabase:
    """A computation process's own PostgreSQL connection, opened on first use with the
    worker's settings (``core.stores.postgres_options``) and dropped after an error (the next
    question opens a new one). One question at a time: the process runs one task at a time."""

    def __init__(self) -> None:
        self._connection: asyncpg.Connection | None = None

    def run(self, query: Query, mark: int | None) -> tuple[int, bytes]:
        """The number of ``query``'s records and their texts, joined (``queries.fetch``).
        Raises ``queries.StoreUnavailable`` (it pickles: the worker answers 503)."""
        from covid_stats_api.reads.queries import StoreUnavailable

        try:
            return _loop().run_until_complete(self._fetch(query, mark))
        except DATABASE_ERRORS as exc:
            self._drop()
            raise StoreUnavailable(repr(exc)) from None

    async def _fetch(self, query: Query, mark: int | None) -> tuple[int, bytes]:
        import asyncpg

        from covid_stats_api.core.config import get_settings
        from covid_stats_api.core.stores import postgres_options
        from covid_stats_api.reads.queries import fetch

        if self._connection is None or self._connection.is_closed():
            settings = get_settings()
            self._connection = await asyncpg.connect(
                settings.database_url,
                server_settings={"application_name": APPLICATION_NAME},
                **postgres_options(settings),
            )
        return await fetch(self._connection, query, mark)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()


class ProcessRedis:
    """A computation process's own Redis connection, opened on first use with the worker's
    settings (``core.stores.redis_options``) and dropped after an error: it stores the
    answers the process computes, so their bytes (up to ``QUERY_ANSWER_MAX_BYTES`` and the
    gzip body) never cross the worker's connection to Redis. Writing them there was the
    largest single part of the time a worker held its interpreter for a question (15.6 %, a
    py-spy profile; docs/performance.md, "The scheduler's tick")."""

    def __init__(self) -> None:
        self._store: SnapshotStore | None = None

    def store(self, target: FillTarget, answer: CachedAnswer) -> int | None:
        """The answers the store pushed out of the budget; None when Redis failed (the
        worker stores the answer then, and releases the fill lock)."""
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        from covid_stats_api.core.config import get_settings
        from covid_stats_api.core.stores import redis_options
        from covid_stats_contract.keys import RedisKeys
        from covid_stats_contract.snapshots import SnapshotStore

        try:
            if self._store is None:
                settings = get_settings()
                client = Redis.from_url(
                    settings.redis_url, client_name=APPLICATION_NAME, **redis_options(settings)
                )
                self._store = SnapshotStore(client, RedisKeys(settings.redis_key_prefix))
            return _loop().run_until_complete(self._store.store_query(target, answer))
        except (RedisError, OSError):
            store, self._store = self._store, None
            if store is not None:
                with contextlib.suppress(RedisError, OSError):
                    _loop().run_until_complete(store.redis.aclose())
            return None


_database = ProcessDatabase()
_redis = ProcessRedis()


def answered(
    query: Query, mark: int | None, max_bytes: int | None, target: FillTarget | None = None
) -> Answered:
    """(records, size, body, ETag, gzip body, stored) of ``query``'s answer (as of the version
    ``mark``; None: now), fetched and rendered in this process; over ``max_bytes`` (None: no
    limit) the body, tag and gzip are left out (the answer is refused: only its size counts).
    An answer with records is stored at ``target`` (when given) by this process. Raises
    ``queries.UnknownField`` and ``queries.StoreUnavailable``."""
    from covid_stats_api.reads.queries import render, split, trim_heap
    from covid_stats_contract.snapshots import CachedAnswer

    records, joined = _database.run(query, mark)
    if not records and query.single:  # no record to render: the worker answers NoRecords
        return records, 0, b"", "", b"", None
    body = render(query, split(joined))
    del joined
    size = len(body)
    if max_bytes is not None and size > max_bytes:
        del body
        trim_heap()
        return records, size, b"", "", b"", None
    gzip = compress(body)
    etag = etag_for(body)
    stored = None
    if target is not None and records:  # an empty answer is never cached (``Uncached``)
        stored = _redis.store(target, CachedAnswer(body, etag, CONTENT_TYPES[query.fmt], gzip))
    trim_heap()
    return records, size, body, etag, gzip, stored


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

    async def answer(
        self,
        query: Query,
        mark: int | None,
        max_bytes: int | None,
        target: FillTarget | None = None,
    ) -> Answered:
        """``answered`` in one of the processes."""
        return await self.call(answered, query, mark, max_bytes, target)

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

    async def close(self) -> None:
        """Stop the processes: queued computations cancelled, a running one finished (at a
        worker's stop the drain has answered every request already), in a thread, as joining
        them waits. Joined, the pool's queues go, and their semaphores are unlinked: shut
        down without waiting, the worker exited with them still registered, and the
        resource tracker warned of "leaked semaphore objects" at every stop (plain text
        among the JSON log lines)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
