"""The fetcher's Prometheus metrics (served on its own port at ``/metrics``).

One process, one registry: the fetcher runs no worker processes, so the default registry is
exact. Names follow Prometheus conventions (base units, ``_total``, ``_seconds``).
"""

from __future__ import annotations

import time
from typing import Literal, get_args

from prometheus_client import Counter, Gauge, Histogram, Info

from covid_stats_contract.resources import RESOURCES
from stats_fetcher import __version__

NAMESPACE = "covid_stats_fetcher"

# The label values the alert rules count failures by. A labelled series exists only from the
# first time its values are used, and increase() cannot count a series' first sample: born
# at 1, the first failure would never reach an alert (CovidStatsFetchFailing,
# CovidStatsPublishFailing, CovidStatsWebhookDeliveriesGivenUp). Each of these series is
# exported at 0 from the start (the end of this module).
FetchOutcome = Literal["updated", "unchanged", "not_modified", "rejected", "failed"]
PublishError = Literal["redis", "fenced"]
WebhookOutcome = Literal["delivered", "retry", "given_up"]

FETCHES = Counter(
    "fetches",
    "Upstream fetches by resource and outcome (updated, unchanged, not_modified, rejected, failed)",
    ["resource", "outcome"],
    namespace=NAMESPACE,
)
INVALID_REQUESTS = Counter(
    "invalid_requests",
    "Requests the port's HTTP protocol refused before the app saw them, by status (400 not"
    " HTTP/1.1, 408 too slow, 414/431 head too large); logged sampled (docs/limits.md)",
    ["status"],
    namespace=NAMESPACE,
)
FETCH_ERRORS = Counter(
    "fetch_errors",
    "Fetches that failed or whose payload was rejected, by resource and reason",
    ["resource", "reason"],
    namespace=NAMESPACE,
)
FETCH_DURATION = Histogram(
    "fetch_duration_seconds",
    "Time to fetch one resource, retries included",
    ["resource"],
    namespace=NAMESPACE,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECORDS_WRITTEN = Counter(
    "records_written",
    "Records inserted or changed in PostgreSQL",
    ["resource"],
    namespace=NAMESPACE,
)
RECORDS_DELETED = Counter(
    "records_deleted",
    "Records deleted from PostgreSQL because the upstream no longer has them",
    ["resource"],
    namespace=NAMESPACE,
)
LAST_SUCCESS = Gauge(
    "last_success_timestamp_seconds",
    "Unix time of the last fetch that confirmed or updated the resource",
    ["resource"],
    namespace=NAMESPACE,
)
REFRESH_DURATION = Histogram(
    "refresh_duration_seconds",
    "Time of one whole refresh (all resources, store, publish)",
    namespace=NAMESPACE,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SNAPSHOTS_PUBLISHED = Counter(
    "snapshots_published", "Snapshots published to Redis", namespace=NAMESPACE
)
PUBLISH_ERRORS = Counter(
    "publish_errors",
    "Snapshots that could not be published, by reason (redis, fenced)",
    ["reason"],
    namespace=NAMESPACE,
)
SNAPSHOT_ID = Gauge(
    "snapshot_id", "Id of the last snapshot this process published", namespace=NAMESPACE
)
LEADER = Gauge("leader", "1 while this process holds the leader lease", namespace=NAMESPACE)
FETCH_INTERVAL = Gauge(
    "fetch_interval_seconds",
    "The configured time between refreshes (FETCH_INTERVAL_SECONDS, before jitter); the "
    "staleness alerts compare the data age against it",
    namespace=NAMESPACE,
)
BUILD = Info("build", "Version of the stats-fetcher", namespace=NAMESPACE)
BUILD.info({"version": __version__})

_DATA_CONFIRMED_AT: list[float] = []  # [unix time]: when the data was last confirmed fresh


def data_confirmed(at: float | None = None) -> None:
    """The data in the stores is as fresh as the upstream's at ``at`` (now by default)."""
    _DATA_CONFIRMED_AT[:] = [time.time() if at is None else at]


def _data_age() -> float:
    return time.time() - _DATA_CONFIRMED_AT[0] if _DATA_CONFIRMED_AT else float("nan")


DATA_AGE = Gauge(
    "data_age_seconds",
    "Seconds since every resource was last confirmed current with the upstream (NaN: never)",
    namespace=NAMESPACE,
)
DATA_AGE.set_function(_data_age)

UPSTREAM_BODY_BYTES = Gauge(
    "upstream_body_bytes",
    "Size of the resource's last upstream body read whole (a 200 within UPSTREAM_MAX_BYTES)",
    ["resource"],
    namespace=NAMESPACE,
)

WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (a 2xx), retry (failed, tried again"
    " later), given_up (failed its WEBHOOK_MAX_ATTEMPTS-th attempt)",
    ["outcome"],
    namespace=NAMESPACE,
)
WEBHOOK_DELIVERY_DURATION = Histogram(
    "webhook_delivery_duration_seconds",
    "Time of one webhook delivery attempt (the POST, until its answer or failure)",
    namespace=NAMESPACE,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WEBHOOK_PENDING = Gauge(
    "webhook_deliveries_pending",
    "Webhook deliveries not yet delivered nor given up, as the leader last counted them",
    namespace=NAMESPACE,
)

PURGES = Counter(
    "purges",
    "PURGE requests sent to the edge caches (one per address of a PURGE_URLS host and batch"
    " of keys) by outcome: purged (a 2xx), failed (a non-2xx, a timeout, a connection or"
    " name resolution error: the keys are tried again)",
    ["outcome"],
    namespace=NAMESPACE,
)
PURGE_DURATION = Histogram(
    "purge_duration_seconds",
    "Time of one PURGE request (until its answer or failure)",
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PURGE_PENDING_KEYS = Gauge(
    "purge_keys_pending",
    "Surrogate keys waiting to be purged, over every PURGE_URLS URL (0 when every purge"
    " reached every address)",
    namespace=NAMESPACE,
)


for _resource in RESOURCES:
    for _outcome in get_args(FetchOutcome):
        FETCHES.labels(_resource.key, _outcome)
for _reason in get_args(PublishError):
    PUBLISH_ERRORS.labels(_reason)
for _outcome in get_args(WebhookOutcome):
    WEBHOOK_DELIVERIES.labels(_outcome)
