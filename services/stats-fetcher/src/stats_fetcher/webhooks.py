"""Webhooks: after each publish that changed data, a signed JSON event POSTed to every
``WEBHOOK_URLS`` URL, retried with backoff, in the background (a publish never waits).

- **Outbox**: the publish's own transaction (``publishes.record_publish``) adds one
  ``webhook_deliveries`` row per URL; the sender works from those rows, so an event is sent
  even when the leader that published dies before sending it.
- **Only the leader sends**: the sender runs while this replica holds the leader lease and
  checks the lease in Redis before it claims anything.
- **Claims**: a due row is claimed in one statement (``claimed_by`` the lease value, until
  ``claimed_until``: twice ``WEBHOOK_TIMEOUT_SECONDS`` plus 5 s, longer than an attempt can
  last) and settled only by its claimer. A new leader cannot claim a row its predecessor
  holds until the claim ends. So an event reaches a URL more than once only when the
  receiver took the POST and the row was never settled (its claimer died, stalled past the
  claim or shut down, or PostgreSQL failed): at most one extra POST per such failure, with
  the same ``webhook-id`` (derived from the snapshot and publish ids), by which the receiver
  dedupes.
- **Signing**: the Standard Webhooks scheme (``standardwebhooks``): ``webhook-id``,
  ``webhook-timestamp`` (the attempt's Unix time), ``webhook-signature``
  (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) with ``WEBHOOK_SECRET``.
- **Retries**: a non-2xx answer, a timeout or a connection error is tried again after
  ``WEBHOOK_RETRY_INITIAL_SECONDS`` doubled each attempt (+/- 25 % jitter, at most
  ``WEBHOOK_RETRY_MAX_SECONDS``), up to ``WEBHOOK_MAX_ATTEMPTS`` attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from covid_stats_contract.documents import JSON_CONTENT_TYPE
from covid_stats_runtime.stores import DATABASE_ERRORS
from stats_fetcher import metrics
from stats_fetcher.config import Settings
from stats_fetcher.leader import LeaderLease
from stats_fetcher.stores import SchemaNotReady, Stores, http_client

log = structlog.get_logger("stats_fetcher.webhooks")

EVENT_TYPE = "covid-stats.publish"
CHANGES_PATH = "/v1/changes.json"
# Rows claimed per pass; how often the sender looks for due rows when nothing wakes it.
_BATCH = 20
_POLL_SECONDS = 1.0

_CLAIM = """
UPDATE webhook_deliveries d
SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
    attempts = d.attempts + 1
FROM publishes p
WHERE p.id = d.publish_id AND (d.publish_id, d.url) IN (
    SELECT publish_id, url FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now() AND url = ANY($3::text[])
      AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY publish_id, url LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING d.publish_id, d.url, d.attempts, p.snapshot_id, p.published_at, p.resources,
          p.states, p.documents
"""


def webhook_id(snapshot_id: str, publish_id: int) -> str:
    """The event's ``webhook-id``: the same for every attempt and every leader."""
    return f"snapshot-{snapshot_id}-publish-{publish_id}"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_body(row: Any) -> bytes:
    """The event of one logged publish (a ``publishes`` row), the same bytes every attempt.
    Links are paths of the api (relative to its base URL)."""
    published_at: datetime = row["published_at"]
    since = _iso(published_at - timedelta(microseconds=1))
    event = {
        "type": EVENT_TYPE,
        "timestamp": _iso(published_at),
        "data": {
            "publish_id": row["publish_id"],
            "snapshot_id": row["snapshot_id"],
            "published_at": _iso(published_at),
            "resources": list(row["resources"]),
            "states": list(row["states"]),
            "links": {
                "changes": f"{CHANGES_PATH}?since={since}",
                "documents": [f"/{name}" for name in row["documents"]],
            },
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def backoff(attempts: int, initial: float, longest: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    wait = min(longest, initial * 2 ** max(0, attempts - 1))
    return float(wait) * random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not a secret


class WebhookSender:
    def __init__(self, settings: Settings, stores: Stores, lease: LeaderLease) -> None:
        self.settings = settings
        self.stores = stores
        self.lease = lease
        self.urls = list(settings.webhook_url_list)
        secret = settings.webhook_secret
        self.signer = Webhook(secret.get_secret_value()) if secret is not None else None
        self.claim_seconds = 2 * settings.webhook_timeout_seconds + 5
        self.http = http_client(settings.webhook_timeout_seconds, follow_redirects=False)
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.urls) and self.signer is not None

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self.http.aclose()

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver due events while this replica leads, until ``stopping``."""
        while self.enabled and not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL_SECONDS)
            self._wake.clear()
            if stopping.is_set() or not self.lease.held:
                continue
            try:
                while await self.deliver_due() == _BATCH:
                    pass
            except SchemaNotReady as exc:
                log.error("schema_not_ready", error=str(exc))
            except DATABASE_ERRORS as exc:
                log.warning("database_unavailable", during="webhooks", error=repr(exc))
            except RedisError as exc:
                log.warning("redis_unavailable", during="webhooks", error=repr(exc))
            except Exception:  # a bug must not stop the sender: log it, try again
                log.exception("webhooks_failed")

    async def deliver_due(self) -> int:
        """Claim the due deliveries (if this replica still holds the lease in Redis) and
        send them concurrently. Returns how many were claimed."""
        fence = self.lease.value
        if fence is None or not self.enabled:
            return 0
        pool = await self.stores.pool()
        current = await self.stores.redis.get(self.stores.keys.leader)
        if current not in (fence, fence.encode()):
            return 0
        async with pool.acquire() as conn:
            rows = await conn.fetch(_CLAIM, fence, self.claim_seconds, self.urls, _BATCH)
        await asyncio.gather(*(self._deliver(fence, row) for row in rows))
        async with pool.acquire() as conn:
            pending = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' "
                "AND url = ANY($1::text[])",
                self.urls,
            )
        metrics.WEBHOOK_PENDING.set(pending)
        return len(rows)

    async def _deliver(self, fence: str, row: Any) -> None:
        assert self.signer is not None
        body = event_body(row)
        msg_id = webhook_id(row["snapshot_id"], row["publish_id"])
        now = datetime.now(UTC)
        headers = {
            "Content-Type": JSON_CONTENT_TYPE,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(msg_id, now, body),
        }
        started = time.perf_counter()
        error: str | None
        try:
            response = await self.http.post(row["url"], content=body, headers=headers)
            error = None if 200 <= response.status_code < 300 else f"http_{response.status_code}"
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError as exc:
            error = f"connection: {type(exc).__name__}"
        metrics.WEBHOOK_DELIVERY_DURATION.observe(time.perf_counter() - started)
        attempts: int = row["attempts"]
        given_up = error is not None and attempts >= self.settings.webhook_max_attempts
        outcome: metrics.WebhookOutcome = (
            "delivered" if error is None else "given_up" if given_up else "retry"
        )
        wait = backoff(
            attempts,
            self.settings.webhook_retry_initial_seconds,
            self.settings.webhook_retry_max_seconds,
        )
        async with (await self.stores.pool()).acquire() as conn:
            settled = await conn.execute(
                "UPDATE webhook_deliveries SET "
                "state = CASE $4 WHEN 'delivered' THEN 'delivered' "
                "WHEN 'given_up' THEN 'failed' ELSE 'pending' END, "
                "delivered_at = CASE WHEN $4 = 'delivered' THEN now() END, "
                "next_attempt_at = now() + make_interval(secs => $5), "
                "claimed_until = NULL, last_error = $6 "
                "WHERE publish_id = $1 AND url = $2 AND claimed_by = $3",
                row["publish_id"],
                row["url"],
                fence,
                outcome,
                wait,
                error,
            )
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        event = "webhook_delivered" if error is None else "webhook_failed"
        fields = {"publish_id": row["publish_id"], "attempt": attempts, "outcome": outcome}
        if settled.endswith(" 0"):
            fields["claim"] = "lost"  # a successor claimed it after ours ended
        if error is None:
            log.info(event, **fields)
        else:
            log.warning(event, error=error, retry_in=None if given_up else round(wait, 1), **fields)
