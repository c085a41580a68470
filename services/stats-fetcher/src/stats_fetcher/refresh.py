"""One refresh: every resource fetched, checked and stored on its own, then one snapshot.

For each resource, concurrently: a conditional GET (304: nothing to do), a content hash
(the same body as the last stored one: nothing to write), validation (a rejected payload
leaves the last good records in place), then one transaction that syncs its table. When any
resource changed, or Redis's snapshot is not PostgreSQL's data (Redis restarted or flushed;
an earlier refresh stored records and then died or could not publish), every document is
rendered from PostgreSQL and published as one snapshot, fenced by the leader lease.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from redis.exceptions import RedisError, ResponseError

from covid_stats_contract import history
from covid_stats_contract import records as store
from covid_stats_contract.documents import COMPRESSION, DocumentBody, content_hash
from covid_stats_contract.publishes import Publish, record_publish
from covid_stats_contract.records import UpstreamState
from covid_stats_contract.resources import RESOURCES, Resource
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.stores import DATABASE_ERRORS
from stats_fetcher import metrics
from stats_fetcher.upstream import FetchFailed, UpstreamClient
from stats_fetcher.validation import Rejected, jurisdictions, parse_payload

log = structlog.get_logger("stats_fetcher.refresh")
tracer = trace.get_tracer(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    resource: str
    outcome: metrics.FetchOutcome
    reason: str | None = None
    records: int = 0
    written: int = 0
    deleted: int = 0
    validate_seconds: float = 0.0  # decoding and validation (in a thread)
    store_seconds: float = 0.0  # the PostgreSQL transaction


@dataclass
class RefreshResult:
    outcomes: list[Outcome] = field(default_factory=list)
    snapshot_id: str | None = None
    publish_error: metrics.PublishError | None = None
    logged: Publish | None = None  # the publishes row (None: nothing changed, or not logged)

    @property
    def changed(self) -> bool:
        return any(o.outcome == "updated" for o in self.outcomes)

    @property
    def all_confirmed(self) -> bool:
        return all(o.outcome in ("updated", "unchanged", "not_modified") for o in self.outcomes)


class Refresher:
    def __init__(
        self,
        upstream: UpstreamClient,
        pool: asyncpg.Pool,
        snapshots: SnapshotStore,
        *,
        max_future_days: int = 1,
        min_ratio: float = 0.9,
        webhook_urls: tuple[str, ...] = (),
    ) -> None:
        self.upstream = upstream
        self.pool = pool
        self.snapshots = snapshots
        self.max_future_days = max_future_days
        self.min_ratio = min_ratio
        self.webhook_urls = webhook_urls

    async def refresh(self, fence: str = "") -> RefreshResult:
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            last = await store.upstream_states(conn)
        outcomes = await asyncio.gather(
            *(self._refresh_resource(resource, last.get(resource.key)) for resource in RESOURCES)
        )
        result = RefreshResult(outcomes=list(outcomes))
        # Unchanged resources wrote nothing: ``last`` is still what PostgreSQL holds.
        if result.changed or await self.behind(last):
            await self.publish(result, fence)
        if result.all_confirmed:
            metrics.data_confirmed()
        metrics.REFRESH_DURATION.observe(time.perf_counter() - started)
        log.info(
            "refresh_done",
            outcomes={o.resource: o.outcome for o in outcomes},
            snapshot_id=result.snapshot_id,
            seconds=round(time.perf_counter() - started, 3),
        )
        return result

    async def behind(self, states: dict[str, UpstreamState]) -> bool:
        """Whether Redis lacks the data PostgreSQL holds (``states``: its upstream_resources):
        no current snapshot, or one published from other records. Each snapshot's meta says
        when each resource it was rendered from was stored (``source()``)."""
        current = await self.snapshots.current_id()
        if current is None:
            return True
        published = (await self.snapshots.meta(current)).get("resources")
        return published is None or json.loads(published) != _sources(states)

    async def publish(self, result: RefreshResult, fence: str = "") -> None:
        """Render every document from PostgreSQL and publish them as one snapshot."""
        with tracer.start_as_current_span("publish snapshot") as span:
            await self._publish(result, fence)
            if result.snapshot_id is not None:
                span.set_attribute("covid_stats.snapshot_id", result.snapshot_id)
            if result.publish_error is not None:
                span.set_status(StatusCode.ERROR, result.publish_error)

    async def _publish(self, result: RefreshResult, fence: str) -> None:
        try:  # the forms of the documents this publish leaves unchanged: not compressed again
            previous = await self.snapshots.compressed_forms(COMPRESSION)
        except RedisError as exc:  # the publish will tell: staging needs Redis too
            log.warning("compressed_forms_unread", error=repr(exc))
            previous = {}
        async with self.pool.acquire() as conn:
            marks = await history.version_marks(conn)  # the versions these documents serve
            documents = await store.load_documents(conn, previous)
            states = await store.upstream_states(conn)
        if not documents:
            return
        meta = {
            "published_at": _iso_now(),
            "resources": json.dumps(_sources(states)),
            "compression": COMPRESSION,
        }
        try:
            # Staged, the versions it serves stamped with its id, then activated: an answer
            # computed for the new snapshot already names it (covid_stats_contract.history).
            snapshot_id = await self.snapshots.stage(documents, meta)
            await self._versions(history.stamp_snapshot, snapshot_id, marks)
            await self.snapshots.activate(snapshot_id, fence)
            result.snapshot_id = snapshot_id
        except ResponseError as exc:
            reason: metrics.PublishError = "fenced" if "FENCED" in str(exc) else "redis"
            result.publish_error = reason
            metrics.PUBLISH_ERRORS.labels(reason).inc()
            log.error("publish_refused", reason=reason, error=str(exc))
            return
        except RedisError as exc:
            result.publish_error = "redis"
            metrics.PUBLISH_ERRORS.labels("redis").inc()
            log.error("publish_failed", error=repr(exc))
            return
        await self._versions(history.confirm_published, result.snapshot_id, datetime.now(UTC))
        metrics.SNAPSHOTS_PUBLISHED.inc()
        metrics.SNAPSHOT_ID.set(int(result.snapshot_id))
        reused = sum(doc.reused for doc in documents)
        log.info(
            "snapshot_published",
            snapshot_id=result.snapshot_id,
            documents=len(documents),
            compressed=len(documents) - reused,
            reused=reused,
        )
        await self._log_publish(result, documents, meta["published_at"], fence)

    async def _log_publish(
        self, result: RefreshResult, documents: list[DocumentBody], published_at: str, fence: str
    ) -> None:
        """Log what the publish changed (``publishes``) and queue its webhook deliveries.
        The snapshot is current already: a failure here is logged, and the changes are
        logged with the next publish (compared with the last logged digests)."""
        assert result.snapshot_id is not None
        started = time.perf_counter()
        digests = await asyncio.to_thread(
            lambda: {doc.name: content_hash(doc.body) for doc in documents}
        )

        async def still_leading() -> bool:
            if not fence:
                return True
            current = await self.snapshots.redis.get(self.snapshots.keys.leader)
            return current in (fence, fence.encode())

        try:
            async with self.pool.acquire() as conn:
                result.logged = await record_publish(
                    conn,
                    result.snapshot_id,
                    datetime.fromisoformat(published_at),
                    digests,
                    self.webhook_urls,
                    still_leading,
                )
        except (*DATABASE_ERRORS, RedisError) as exc:
            log.error("publish_log_failed", snapshot_id=result.snapshot_id, error=repr(exc))
            return
        if result.logged is not None:
            changes = result.logged.changes
            log.info(
                "publish_logged",
                snapshot_id=result.snapshot_id,
                publish_id=result.logged.id,
                resources=list(changes.resources),
                states=len(changes.states),
                documents=len(changes.documents),
                seconds=round(time.perf_counter() - started, 3),
            )

    async def _versions(self, step: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """A step of the records' history at publish; a database error is logged, never
        stops the publish (the next publish stamps the versions left unconfirmed)."""
        try:
            async with self.pool.acquire() as conn:
                await step(conn, *args)
        except DATABASE_ERRORS as exc:
            log.warning("versions_stamp_failed", step=step.__name__, error=repr(exc))

    async def _refresh_resource(self, resource: Resource, last: UpstreamState | None) -> Outcome:
        with tracer.start_as_current_span(f"refresh {resource.key}") as span:
            outcome = await self._fetch_and_store(resource, last)
            span.set_attribute("covid_stats.outcome", outcome.outcome)
            if outcome.reason is not None:
                span.set_status(StatusCode.ERROR, outcome.reason)
        metrics.FETCHES.labels(resource.key, outcome.outcome).inc()
        if outcome.reason is not None:
            metrics.FETCH_ERRORS.labels(resource.key, outcome.reason).inc()
        else:
            metrics.LAST_SUCCESS.labels(resource.key).set_to_current_time()
        return outcome

    async def _fetch_and_store(self, resource: Resource, last: UpstreamState | None) -> Outcome:
        key = resource.key
        try:
            with metrics.FETCH_DURATION.labels(key).time():
                fetched = await self.upstream.fetch(resource, last)
        except FetchFailed as exc:
            log.warning("fetch_failed", resource=key, reason=exc.reason, detail=exc.detail)
            return Outcome(key, "failed", exc.reason)
        if fetched.not_modified:
            return Outcome(key, "not_modified")
        metrics.UPSTREAM_BODY_BYTES.labels(key).set(len(fetched.body))
        digest = content_hash(fetched.body)
        if last is not None and digest == last.content_hash:
            return Outcome(key, "unchanged")
        today = datetime.now(UTC).date()
        validating = time.perf_counter()
        try:
            with tracer.start_as_current_span(f"validate {key}"):
                records = await asyncio.to_thread(
                    parse_payload,
                    resource,
                    self.upstream.fmt,
                    fetched.body,
                    last,
                    today,
                    max_future_days=self.max_future_days,
                    min_ratio=self.min_ratio,
                )
        except Rejected as exc:
            log.warning("payload_rejected", resource=key, reason=exc.reason, detail=exc.detail)
            return Outcome(key, "rejected", exc.reason)
        validated = time.perf_counter()
        state = UpstreamState(
            resource=key,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            content_hash=digest,
            record_count=len(records),
            jurisdictions=jurisdictions(resource, records),
            fetched_at=datetime.now(UTC),
            body_bytes=len(fetched.body),
        )
        with tracer.start_as_current_span(f"store {key}") as span:
            span.set_attribute("covid_stats.records", len(records))
            span.set_attribute("covid_stats.body_bytes", len(fetched.body))
            async with self.pool.acquire() as conn:
                synced = await store.sync_resource(conn, resource, records, state)
        metrics.RECORDS_WRITTEN.labels(key).inc(synced.written)
        metrics.RECORDS_DELETED.labels(key).inc(synced.deleted)
        return Outcome(
            key,
            "updated",
            None,
            len(records),
            synced.written,
            synced.deleted,
            validate_seconds=validated - validating,
            store_seconds=time.perf_counter() - validated,
        )


def _sources(states: dict[str, UpstreamState]) -> dict[str, dict[str, str]]:
    return {key: state.source() for key, state in states.items()}


def _iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
