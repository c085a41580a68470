"""Webhooks against real servers: the fetcher (`stats-fetcher run`), PostgreSQL, Redis, the
replay upstream (its control API changes the data between refreshes) and a real HTTP
receiver (``http.server`` in a thread) that verifies every signature with the
``standardwebhooks`` package, as a subscriber would."""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from covid_stats_contract.keys import RedisKeys
from devstack.procs import wait_until
from recording import RecordingServer
from support import Fetcher, Upstream, sql

# Each test starts from empty stores: the archive's last days (the `recent` upstream) are
# enough for the changes it makes and the deliveries it counts.
pytestmark = pytest.mark.recent

TOKEN = "test-refresh-token"
US_CURRENT = "/v1/us/current.json"


@dataclass(frozen=True)
class Received:
    webhook_id: str
    body: bytes
    event: dict[str, Any] | None  # None: the signature did not verify


class Receiver(RecordingServer[Received]):
    """A webhook endpoint: verifies and records each POST, answers with the statuses of
    ``plan`` in turn (then 204), and can hold requests (``RecordingServer``)."""

    default_status = 204

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/hooks/covid"

    def record(self, request: BaseHTTPRequestHandler) -> Received:
        body = request.rfile.read(int(request.headers["Content-Length"]))
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = self.verifier.verify(body, headers)
        except WebhookVerificationError:
            event = None
        return Received(headers.get("webhook-id", ""), body, event)

    def events(self) -> list[Received]:
        return self.requests()

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.events()]


@pytest.fixture
def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    server = Receiver(secret)
    yield server
    server.close()


@pytest.fixture
def env(service_env: dict[str, str], receiver: Receiver, secret: str) -> dict[str, str]:
    return {
        **service_env,
        "REFRESH_TOKEN": TOKEN,
        "FETCH_INTERVAL_SECONDS": "3600",
        "WEBHOOK_URLS": receiver.url,
        "WEBHOOK_SECRET": secret,
        "WEBHOOK_TIMEOUT_SECONDS": "10",
        "WEBHOOK_RETRY_INITIAL_SECONDS": "0.2",
    }


def current_snapshot(redis_url: str) -> str:
    raw = redis.Redis.from_url(redis_url).get(RedisKeys().current_snapshot)
    return "" if raw is None else str(int(raw))


def refreshes(fetcher: Fetcher) -> float:
    return fetcher.metric("covid_stats_fetcher_refresh_duration_seconds_count")


def request_refresh(fetcher: Fetcher) -> None:
    response = httpx.post(f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202, response.text


def change_us_current(upstream: Upstream) -> list[dict[str, Any]]:
    changed: list[dict[str, Any]] = json.loads(upstream.get(US_CURRENT).content)
    changed[0]["positive"] = (changed[0]["positive"] or 0) + 1
    upstream.fault(US_CURRENT, "body", body=changed)
    return changed


def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    wait_until(predicate, timeout, interval=0.1, what=what)


def test_each_changing_publish_sends_one_signed_event_and_an_unchanged_one_none(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    upstream: Upstream,
    redis_url: str,
    database_url: str,
) -> None:
    fetcher = fetcher_factory(env)
    until(lambda: len(receiver.events()) == 1, "the first publish's event")
    first = receiver.events()[0]
    assert first.event is not None, "the signature must verify"
    logged = sql(database_url, "SELECT id, snapshot_id FROM publishes ORDER BY id")
    assert [r["snapshot_id"] for r in logged] == [current_snapshot(redis_url)]
    data = first.event["data"]
    assert first.event["type"] == "covid-stats.publish"
    assert data["snapshot_id"] == logged[0]["snapshot_id"]
    assert data["publish_id"] == logged[0]["id"]
    assert first.webhook_id == f"snapshot-{data['snapshot_id']}-publish-{data['publish_id']}"
    # the first publish changes every document: every resource, every state
    states = {r["state"] for r in json.loads(upstream.get("/v1/states/current.json").content)}
    assert data["resources"] == [
        "us/current", "us/daily", "states/current", "states/daily", "states/info", "status"
    ]  # fmt: skip
    assert set(data["states"]) == states

    changed = change_us_current(upstream)
    request_refresh(fetcher)
    until(lambda: len(receiver.events()) == 2, "the changed publish's event")
    second = receiver.events()[1]
    assert second.event is not None
    assert current_snapshot(redis_url) == second.event["data"]["snapshot_id"]
    assert second.event["data"]["resources"] == ["us/current", "status"]
    assert second.event["data"]["states"] == []
    links = second.event["data"]["links"]
    assert sorted(links["documents"]) == sorted(
        ["/v1/us/current.json", "/v1/us/current.csv", "/v1/status.json"]
    )
    assert links["changes"].startswith("/v1/changes.json?since=")
    served = redis.Redis.from_url(redis_url).hget(
        RedisKeys().document(current_snapshot(redis_url), "v1/us/current.json"), "body"
    )
    assert json.loads(served or b"") == changed

    # nothing changed: the refresh publishes nothing, logs nothing, sends nothing
    before = refreshes(fetcher)
    request_refresh(fetcher)
    until(lambda: refreshes(fetcher) > before, "the unchanged refresh")
    assert len(sql(database_url, "SELECT id FROM publishes")) == 2
    assert fetcher.metric("covid_stats_fetcher_webhook_deliveries_total", outcome="delivered") == 2
    assert fetcher.metric("covid_stats_fetcher_webhook_deliveries_total", outcome="retry") == 0
    assert fetcher.metric("covid_stats_fetcher_webhook_delivery_duration_seconds_count") == 2
    assert len(receiver.events()) == 2


def test_a_failing_receiver_gets_the_event_again_and_the_publish_never_waits(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    upstream: Upstream,
    redis_url: str,
    database_url: str,
) -> None:
    fetcher = fetcher_factory(env)
    until(lambda: len(receiver.events()) == 1, "the first publish's event")
    receiver.plan = [503, 500]  # the next two attempts fail, the third succeeds
    receiver.hold.clear()  # and the first of them hangs until the test releases it
    changed = change_us_current(upstream)
    published_before = fetcher.metric("covid_stats_fetcher_snapshots_published_total")
    request_refresh(fetcher)
    until(receiver.holding.is_set, "the delivery to be in flight")
    # The receiver has not answered, yet the snapshot is current and the refresh is over.
    until(
        lambda: fetcher.metric("covid_stats_fetcher_snapshots_published_total") > published_before,
        "the publish, while the delivery hangs",
    )
    served = redis.Redis.from_url(redis_url).hget(
        RedisKeys().document(current_snapshot(redis_url), "v1/us/current.json"), "body"
    )
    assert json.loads(served or b"") == changed
    assert len(receiver.events()) == 2  # the held attempt only
    receiver.hold.set()

    until(
        lambda: (
            fetcher.metric("covid_stats_fetcher_webhook_deliveries_total", outcome="delivered") == 2
        ),
        "the retried delivery",
    )
    attempts = receiver.events()[1:]
    assert len(attempts) == 3
    assert len({r.webhook_id for r in attempts}) == 1  # one message, three attempts
    assert len({r.body for r in attempts}) == 1
    assert all(r.event is not None for r in attempts)
    assert fetcher.metric("covid_stats_fetcher_webhook_deliveries_total", outcome="retry") == 2
    assert fetcher.metric("covid_stats_fetcher_webhook_deliveries_pending") == 0
    row = sql(
        database_url,
        "SELECT state, attempts, last_error FROM webhook_deliveries ORDER BY publish_id DESC",
    )[0]
    assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 3, None)


def _two_fetchers(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    timeout_seconds: str,
) -> tuple[Fetcher, Fetcher]:
    """A leader that delivered the first publish's event, and a follower."""
    ha = {**env, "LEADER_LEASE_SECONDS": "1.5", "WEBHOOK_TIMEOUT_SECONDS": timeout_seconds}
    first = fetcher_factory(ha, "first")
    until(first.is_leader, "the first fetcher to lead")
    until(lambda: len(receiver.events()) == 1, "the first publish's event")
    second = fetcher_factory(ha, "second")
    assert not second.is_leader()
    return first, second


def test_a_leader_stalled_mid_delivery_keeps_its_claim_so_nothing_is_sent_twice(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    upstream: Upstream,
    database_url: str,
) -> None:
    """The leader stalls (SIGSTOP) while its POST is in flight; the follower takes the lease
    but not the delivery the stalled leader claimed. The old leader resumes, gets the answer
    and records it within its claim: the event reached the receiver exactly once."""
    first, second = _two_fetchers(env, receiver, fetcher_factory, "10")  # a 25 s claim
    receiver.hold.clear()
    change_us_current(upstream)
    request_refresh(second)  # relayed to the leader
    until(receiver.holding.is_set, "the leader's delivery to be in flight")
    os.kill(first.process.proc.pid, signal.SIGSTOP)
    try:
        until(second.is_leader, "the follower to lead")
        # the new leader's sender has looked at the deliveries (and found one pending)
        until(
            lambda: second.metric("covid_stats_fetcher_webhook_deliveries_pending") == 1,
            "a pass of the new leader's sender",
        )
    finally:
        os.kill(first.process.proc.pid, signal.SIGCONT)
    receiver.hold.set()
    until(
        lambda: [r["state"] for r in sql(database_url, DELIVERIES)] == ["delivered"] * 2,
        "the stalled leader to record its delivery",
    )
    rows = sql(database_url, DELIVERIES)
    assert [r["attempts"] for r in rows] == [1, 1]
    assert len(receiver.events()) == 2
    assert len(set(receiver.ids())) == 2


DELIVERIES = "SELECT state, attempts, claimed_by FROM webhook_deliveries ORDER BY publish_id"


def test_a_leader_dying_mid_delivery_repeats_it_once_with_the_same_id(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    upstream: Upstream,
    database_url: str,
) -> None:
    """The leader dies while its POST is in flight (the receiver got it, the answer never
    reached the sender). The follower takes the lease, waits for the dead leader's claim to
    end, and sends the event once more, with the same webhook-id (the documented bound: one
    extra POST per leadership change mid-delivery); delivered events are never sent again."""
    first, second = _two_fetchers(env, receiver, fetcher_factory, "2")  # a 9 s claim
    receiver.hold.clear()
    change_us_current(upstream)
    request_refresh(second)  # relayed to the leader
    until(receiver.holding.is_set, "the leader's delivery to be in flight")
    first.process.proc.kill()  # dies before it can record the delivery
    first.process.proc.wait(10)
    receiver.hold.set()
    until(second.is_leader, "the follower to lead")
    until(lambda: len(receiver.events()) == 3, "the new leader's delivery", timeout=60)

    ids = receiver.ids()
    assert ids[1] == ids[2] != ids[0]  # the in-flight event again, the same id
    assert receiver.events()[1].body == receiver.events()[2].body
    assert all(r.event is not None for r in receiver.events())
    # the new leader sends nothing more: the first event was delivered already
    before = refreshes(second)
    request_refresh(second)
    until(lambda: refreshes(second) > before, "an unchanged refresh by the new leader")
    assert second.metric("covid_stats_fetcher_webhook_deliveries_total", outcome="delivered") == 1
    rows = sql(database_url, DELIVERIES)
    assert [(r["state"], r["attempts"]) for r in rows] == [("delivered", 1), ("delivered", 2)]
    assert rows[0]["claimed_by"] != rows[1]["claimed_by"]  # each leader's own fence
    assert len(receiver.events()) == 3


def test_webhook_settings_refuse_a_malformed_secret_without_echoing_it(secret: str) -> None:
    from pydantic import ValidationError

    from stats_fetcher.config import Settings

    url = "https://hooks.example.com/covid"
    ok = Settings.model_validate({"webhook_urls": f"{url}, {url}", "webhook_secret": secret})
    assert ok.webhook_url_list == (url,)
    for bad in ("not-a-secret-Xq93", "whsec_" + "QUJD" * 2, "whsec_%%%%" + "QUJD" * 8):
        with pytest.raises(ValidationError) as refused:
            Settings.model_validate({"webhook_urls": url, "webhook_secret": bad})
        assert "whsec_" in str(refused.value)
        assert bad not in str(refused.value)
    with pytest.raises(ValidationError, match="WEBHOOK_URLS needs WEBHOOK_SECRET"):
        Settings.model_validate({"webhook_urls": url})
    with pytest.raises(ValidationError, match="not an http"):
        Settings.model_validate({"webhook_urls": "ftp://x/y", "webhook_secret": secret})
