"""The stats-fetcher service: leader lease, schedule, Redis watchdog and HTTP port.

- Every replica tries to hold the leader lease (``leader``); only the leader refreshes.
- The leader refreshes when it becomes leader, then every ``FETCH_INTERVAL_SECONDS`` with
  +/- ``FETCH_JITTER_RATIO`` jitter, and at once when any replica receives ``POST /refresh``
  (relayed over a Redis pub/sub channel).
- Every ``REDIS_CHECK_INTERVAL_SECONDS`` the leader checks that Redis has a current snapshot
  of PostgreSQL's data and rebuilds it from PostgreSQL if not (Redis restarted or flushed; a
  refresh stored records, then died or could not publish): no upstream needed.
- SIGTERM/SIGINT: no new refresh starts; one in flight gets ``SHUTDOWN_GRACE_SECONDS`` to
  finish, else it is cancelled (its transaction rolls back, its staged snapshot is never
  activated and expires); the lease is released so a follower takes over at once.
- An outage of PostgreSQL, Redis or the upstream fails that refresh, is logged, and the
  service goes on; it never exits because a dependency is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import structlog
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from covid_stats_contract import records, schema
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.stores import DATABASE_ERRORS
from covid_stats_runtime.tracing import new_trace, trace_asgi, untraced
from stats_fetcher import __version__, metrics
from stats_fetcher.config import Settings
from stats_fetcher.leader import LeaderLease
from stats_fetcher.refresh import Refresher, RefreshResult
from stats_fetcher.server import create_app
from stats_fetcher.upstream import UpstreamClient

log = structlog.get_logger("stats_fetcher.service")
tracer = trace.get_tracer(__name__)


class SchemaNotReady(RuntimeError):
    pass


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the service, not uvicorn, handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class FetcherService:
    def __init__(self, settings: Settings, tracer_provider: TracerProvider | None = None) -> None:
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.keys = RedisKeys(settings.redis_key_prefix)
        timeout = settings.upstream_timeout_seconds
        self.http = httpx.AsyncClient(
            base_url=str(settings.upstream_base_url).rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": f"covid-stats-fetcher/{__version__}"},
            follow_redirects=True,
        )
        self.redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self.snapshots = SnapshotStore(self.redis, self.keys, settings.snapshot_grace_seconds)
        self.upstream = UpstreamClient(
            self.http,
            settings.upstream_format,
            settings.upstream_retries,
            settings.upstream_retry_initial_seconds,
            settings.upstream_retry_max_seconds,
        )
        self.lease = LeaderLease(
            self.redis,
            self.keys,
            f"{socket.gethostname()}/{os.getpid()}",
            settings.leader_lease_seconds,
        )
        self._pool: asyncpg.Pool | None = None
        self._busy = asyncio.Lock()  # one refresh or rebuild at a time
        self._wake = asyncio.Event()
        self._requested = False
        self._stopping = asyncio.Event()
        self._refresh_task: asyncio.Task[RefreshResult | None] | None = None

    # -- resources --------------------------------------------------------------------------

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool, created on first use so that the fetcher starts while
        PostgreSQL is down and connects once it is up."""
        if self._pool is None:
            pool = await asyncpg.create_pool(
                self.settings.database_url,
                min_size=1,
                max_size=self.settings.db_pool_max_size,
                command_timeout=60,
                timeout=self.settings.upstream_timeout_seconds,  # connect timeout
            )
            async with pool.acquire() as conn:
                version = await schema.current_version(conn)
            if version < schema.LATEST_VERSION:
                await pool.close()
                raise SchemaNotReady(
                    f"database schema is at version {version}, this release needs "
                    f"{schema.LATEST_VERSION}: run `stats-fetcher migrate`"
                )
            self._pool = pool
        return self._pool

    async def close(self) -> None:
        await self.http.aclose()
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()

    async def check_stores(self) -> dict[str, Any]:
        checks: dict[str, Any] = {"leader": self.lease.held}
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except RedisError:
            checks["redis"] = "down"
        try:
            async with (await self.pool()).acquire() as conn:
                await conn.fetchval("SELECT 1")
            checks["postgres"] = "ok"
        except (*DATABASE_ERRORS, SchemaNotReady):
            checks["postgres"] = "down"
        return checks

    # -- work -------------------------------------------------------------------------------

    async def _guarded(
        self,
        what: str,
        work: Callable[[Refresher], Awaitable[RefreshResult | None]],
        *,
        traced: bool = True,
    ) -> RefreshResult | None:
        """Run ``work`` with a refresher (when ``traced``, as the root span ``what`` of a
        trace of its own); a dependency outage is logged, never raised."""
        if not traced:
            return await self._run_guarded(what, work)
        with new_trace(tracer, what) as span:
            result = await self._run_guarded(what, work)
            if result is None:
                span.set_status(StatusCode.ERROR, f"{what} failed")
            return result

    async def _run_guarded(
        self, what: str, work: Callable[[Refresher], Awaitable[RefreshResult | None]]
    ) -> RefreshResult | None:
        try:
            refresher = Refresher(
                self.upstream,
                await self.pool(),
                self.snapshots,
                max_future_days=self.settings.max_future_days,
                min_ratio=self.settings.min_jurisdictions_ratio,
            )
            async with self._busy:
                return await work(refresher)
        except SchemaNotReady as exc:
            log.error("schema_not_ready", error=str(exc))
        except DATABASE_ERRORS as exc:
            log.error("database_unavailable", during=what, error=repr(exc))
        except RedisError as exc:
            log.error("redis_unavailable", during=what, error=repr(exc))
        except Exception:  # a bug must not stop the schedule: log it, try again next time
            log.exception("refresh_failed", during=what)
        return None

    async def refresh(self) -> RefreshResult | None:
        return await self._guarded("refresh", lambda r: r.refresh(self.lease.value or ""))

    async def rebuild_if_behind(self) -> None:
        """Republish from PostgreSQL when Redis has no current snapshot, or one of older
        data than PostgreSQL's."""

        async def rebuild(refresher: Refresher) -> RefreshResult | None:
            async with refresher.pool.acquire() as conn:
                states = await records.upstream_states(conn)
            if not await refresher.behind(states):
                return None
            log.warning("redis_snapshot_behind", action="rebuild from PostgreSQL")
            result = RefreshResult()
            with new_trace(tracer, "rebuild"):  # the check before it is not traced
                await refresher.publish(result, self.lease.value or "")
            return result

        await self._guarded("rebuild", rebuild, traced=False)

    async def request_refresh(self) -> bool:
        """Ask the leader, wherever it runs, to refresh now. False when Redis is down."""
        try:
            await self.redis.publish(self.keys.refresh_channel, "refresh")
        except RedisError:
            return False
        return True

    # -- loops ------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _lead(self) -> None:
        with untraced():  # lease renewals every few seconds: not traces worth keeping
            await self._keep_lease()

    async def _keep_lease(self) -> None:
        while not self._stopping.is_set():
            was = self.lease.held
            try:
                held = await self.lease.keep()
            except RedisError as exc:
                held = False
                log.warning("lease_unavailable", error=repr(exc))
            metrics.LEADER.set(1 if held else 0)
            if held and not was:
                log.info("became_leader", lease=self.lease.value)
                self._requested = True
                self._wake.set()
            elif was and not held:
                log.warning("lost_leadership")
            await self._sleep(self.settings.leader_lease_seconds / 3)

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        next_due = loop.time()
        while not self._stopping.is_set():
            timeout = max(0.0, next_due - loop.time()) if self.lease.held else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stopping.is_set() or not self.lease.held:
                continue
            if not self._requested and loop.time() < next_due:
                continue
            self._requested = False
            self._refresh_task = asyncio.create_task(self.refresh())
            await asyncio.wait({self._refresh_task})
            jitter = random.uniform(-1, 1) * self.settings.fetch_jitter_ratio  # noqa: S311
            next_due = loop.time() + self.settings.fetch_interval_seconds * (1 + jitter)

    async def _watch_redis(self) -> None:
        while not self._stopping.is_set():
            await self._sleep(self.settings.redis_check_interval_seconds)
            if self.lease.held and not self._busy.locked():
                with untraced():  # the check is no trace; a rebuild is one (its own root)
                    await self.rebuild_if_behind()

    async def _listen(self) -> None:
        """Relay POST /refresh from any replica to this one if it leads."""
        with untraced():
            await self._relay_refresh_requests()

    async def _relay_refresh_requests(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.refresh_channel)
                while not self._stopping.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and self.lease.held:
                        log.info("refresh_requested")
                        self._requested = True
                        self._wake.set()
            except RedisError as exc:
                log.warning("refresh_channel_unavailable", error=repr(exc))
                await self._sleep(1.0)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop)
        app: ASGIApp = create_app(self)
        if self.tracer_provider is not None:
            app = trace_asgi(app, self.tracer_provider)
        server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host=self.settings.fetcher_host,
                port=self.settings.fetcher_port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        log.info(
            "fetcher_started",
            upstream=str(self.settings.upstream_base_url),
            interval_seconds=self.settings.fetch_interval_seconds,
            port=self.settings.fetcher_port,
        )
        tasks = [
            asyncio.create_task(coro)
            for coro in (
                server.serve(),
                self._lead(),
                self._schedule(),
                self._watch_redis(),
                self._listen(),
            )
        ]
        await self._stopping.wait()
        await self._finish_refresh()
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.lease.release()
        metrics.LEADER.set(0)
        server.should_exit = True
        await tasks[0]
        await self.close()
        log.info("fetcher_stopped")

    def _stop(self) -> None:
        log.info("stopping")
        self._stopping.set()
        self._wake.set()

    async def _finish_refresh(self) -> None:
        task = self._refresh_task
        if task is None or task.done():
            return
        grace = self.settings.shutdown_grace_seconds
        log.info("waiting_for_refresh", grace_seconds=grace)
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            log.warning("refresh_abandoned", reason="shutdown grace period over")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def one_shot(settings: Settings) -> AsyncIterator[FetcherService]:
    service = FetcherService(settings)
    try:
        yield service
    finally:
        await service.close()


class LeaseHeld(RuntimeError):
    pass


async def _renew(lease: LeaderLease, interval: float) -> None:
    """Renew ``lease`` every ``interval`` seconds (a Redis error: try again next time)."""
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(RedisError):
            await lease.keep()


async def refresh_once(settings: Settings) -> bool:
    """One refresh, holding the leader lease for its duration, renewed as the service renews
    it (refused while a running fetcher holds it). True when it ran and Redis then serves a
    current snapshot."""
    async with one_shot(settings) as service:
        if not await service.lease.keep():
            raise LeaseHeld("another stats-fetcher holds the leader lease")
        renewing = asyncio.create_task(_renew(service.lease, settings.leader_lease_seconds / 3))
        try:
            result = await service.refresh()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await service.lease.release()
        if result is None or result.publish_error is not None:
            return False
        return await service.snapshots.current_id() is not None


async def migrate(settings: Settings, wait_seconds: float) -> list[int]:
    """Apply pending migrations, waiting up to ``wait_seconds`` for PostgreSQL to accept."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(wait_seconds),
        wait=wait_exponential_jitter(multiplier=0.2, max=5),
        retry=retry_if_exception_type(DATABASE_ERRORS),
        reraise=True,
    ):
        with attempt:
            conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return await schema.migrate(conn)
    finally:
        await conn.close()
