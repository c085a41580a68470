"""The stats-fetcher service: its loops (leader lease, schedule, Redis watchdog, refresh
requests) and its signal handling. Its connections are in ``stores``, its HTTP port in
``server``, the one-shot commands (``refresh-once``, ``migrate``) in ``commands``.

- Every replica tries to hold the leader lease (``leader``); only the leader refreshes.
- The leader refreshes when it becomes leader, then every ``FETCH_INTERVAL_SECONDS`` with
  +/- ``FETCH_JITTER_RATIO`` jitter, and at once when any replica receives ``POST /refresh``
  (relayed over a Redis pub/sub channel).
- Every ``REDIS_CHECK_INTERVAL_SECONDS`` the leader checks that Redis has a current snapshot
  of PostgreSQL's data and rebuilds it from PostgreSQL if not (Redis restarted or flushed; a
  refresh stored records, then died or could not publish): no upstream needed.
- While it leads, the webhook sender (``webhooks``) delivers the events the publishes queued,
  in the background: a publish never waits for a receiver; the purger (``purge``) sends the
  edge caches the surrogate keys each publish changed, in the background too.
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from redis.exceptions import RedisError

from covid_stats_contract import records
from covid_stats_contract.edge import purge_keys
from covid_stats_runtime.stores import DATABASE_ERRORS
from covid_stats_runtime.tracing import new_trace, untraced
from stats_fetcher import metrics
from stats_fetcher.config import Settings
from stats_fetcher.leader import LeaderLease
from stats_fetcher.purge import PendingKeys, Purger
from stats_fetcher.refresh import Refresher, RefreshResult
from stats_fetcher.server import embedded_server
from stats_fetcher.stores import SchemaNotReady, Stores
from stats_fetcher.webhooks import WebhookSender

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger("stats_fetcher.service")
tracer = trace.get_tracer(__name__)


class FetcherService:
    def __init__(self, settings: Settings, tracer_provider: TracerProvider | None = None) -> None:
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.stores = Stores(settings)
        self.lease = LeaderLease(
            self.stores.redis,
            self.stores.keys,
            f"{socket.gethostname()}/{os.getpid()}",
            settings.leader_lease_seconds,
        )
        self.webhooks = WebhookSender(settings, self.stores, self.lease)
        self.purger = Purger(
            settings,
            lambda: self.lease.held,
            saved=PendingKeys(self.stores.redis, self.stores.keys),
        )
        self._busy = asyncio.Lock()  # one refresh or rebuild at a time
        self._wake = asyncio.Event()
        self._requested = False
        self._stopping = asyncio.Event()
        self._refresh_task: asyncio.Task[RefreshResult | None] | None = None

    # -- stores -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self.webhooks.close()
        await self.purger.close()
        await self.stores.close()

    async def readiness(self) -> dict[str, Any]:
        """Whether this replica leads, and whether Redis and PostgreSQL answer."""
        leader = self.lease.held
        return {"leader": leader, **await self.stores.check()}

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
                self.stores.upstream,
                await self.stores.pool(),
                self.stores.snapshots,
                max_future_days=self.settings.max_future_days,
                min_ratio=self.settings.min_jurisdictions_ratio,
                webhook_urls=self.settings.webhook_url_list,
            )
            async with self._busy:
                result = await work(refresher)
            if result is not None and result.logged is not None:
                self.webhooks.wake()  # the sender posts in the background: no wait here
                self.purger.purge(purge_keys(result.logged.changes))  # the same: queued
            return result
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
            await self.stores.redis.publish(self.stores.keys.refresh_channel, "refresh")
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
                self.purger.wake()  # it takes up the purges a predecessor left
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
            pubsub = self.stores.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.stores.keys.refresh_channel)
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
        metrics.FETCH_INTERVAL.set(self.settings.fetch_interval_seconds)
        server = embedded_server(self, self.settings, self.tracer_provider)
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
                self.webhooks.run(self._stopping),
                self.purger.run(self._stopping),
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
