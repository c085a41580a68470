"""Purge on publish against real servers: the fetcher (`stats-fetcher run`), PostgreSQL,
Redis, the replay upstream (its control API changes one state's data between refreshes), the
api (whose served ``Surrogate-Key`` headers say which keys a change must purge) and real
HTTP receivers of the PURGE requests (``http.server`` in a thread, on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from covid_stats_contract.edge import (
    CHANGES_KEY,
    PURGE_HEADER_MAX_BYTES,
    PURGE_KEYS_HEADER,
    PURGE_METHOD,
    STATE_PREFIX,
    SURROGATE_KEY_HEADER,
    purge_batches,
)
from devstack.procs import wait_until
from recording import RecordingServer
from stats_fetcher.config import Settings
from stats_fetcher.purge import Purger
from support import ApiUrl, Fetcher, Upstream, run_fetcher, sql

# Each test starts from empty stores: the archive's last days (the `recent` upstream) are
# enough for the changes it makes and the deliveries it counts.
pytestmark = pytest.mark.recent

TOKEN = "test-refresh-token"
STATES_CURRENT = "/v1/states/current.json"
PURGES = "covid_stats_fetcher_purges_total"


@dataclass(frozen=True)
class Purge:
    method: str
    path: str
    host: str
    keys: str  # the xkey-purge header


class Receiver(RecordingServer[Purge]):
    """An edge's purge endpoint: records each PURGE, answers with the statuses of ``plan``
    in turn (then 200), and can hold requests (``RecordingServer``)."""

    method = PURGE_METHOD

    def record(self, request: BaseHTTPRequestHandler) -> Purge:
        return Purge(
            request.command,
            request.path,
            request.headers.get("Host", ""),
            request.headers.get(PURGE_KEYS_HEADER, ""),
        )

    def purges(self) -> list[Purge]:
        return self.requests()

    def keys(self, since: int = 0) -> set[str]:
        return {key for purge in self.purges()[since:] for key in purge.keys.split(" ")}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def env(service_env: dict[str, str], receiver: Receiver) -> dict[str, str]:
    return {
        **service_env,
        "REFRESH_TOKEN": TOKEN,
        "FETCH_INTERVAL_SECONDS": "3600",
        # a name, resolved by the fetcher: the request goes to its address, Host kept
        "PURGE_URLS": f"http://localhost:{receiver.port}/",
        "PURGE_RETRY_INITIAL_SECONDS": "0.2",
        "PURGE_REPEAT_SECONDS": "",  # once: the repeats have tests of their own
    }


def first_purge_done(fetcher: Fetcher) -> None:
    """Wait until ``fetcher``'s first publish is purged: sent, and no key left pending."""
    until(lambda: fetcher.metric(PURGES, outcome="purged") > 0, "the first publish's purge")
    until(lambda: fetcher.metric("covid_stats_fetcher_purge_keys_pending") == 0, "first purge")


def request_refresh(fetcher: Fetcher) -> None:
    response = httpx.post(f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202, response.text


def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    wait_until(predicate, timeout, interval=0.05, what=what)


def change_one_state(upstream: Upstream) -> str:
    """One state's current record changes upstream (its positive count); returns its code."""
    records: list[dict[str, Any]] = json.loads(upstream.get(STATES_CURRENT).content)
    changed = records[len(records) // 2]
    changed["positive"] = (changed["positive"] or 0) + 1
    upstream.fault(STATES_CURRENT, "body", body=records)
    return str(changed["state"])


def served_keys(api: str, path: str) -> set[str]:
    answer = httpx.get(f"{api}{path}", timeout=30)
    assert answer.status_code == 200, (path, answer.text[:200])
    return set(answer.headers[SURROGATE_KEY_HEADER].split(" "))


def test_a_publish_that_changes_one_state_purges_exactly_the_keys_the_api_serves(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    api_factory: Callable[[dict[str, str]], ApiUrl],
    upstream: Upstream,
    database_url: str,
) -> None:
    fetcher = fetcher_factory(env)
    # The first publish changed every document: its keys go in several bounded requests.
    first_purge_done(fetcher)
    first = receiver.purges()
    assert len(first) > 1
    assert all(len(p.keys.encode()) <= PURGE_HEADER_MAX_BYTES for p in first)
    assert {(p.method, p.path, p.host) for p in first} == {
        (PURGE_METHOD, "/", f"localhost:{receiver.port}")
    }
    api = api_factory(env)

    before = len(receiver.purges())
    purged = fetcher.metric(PURGES, outcome="purged")
    state = change_one_state(upstream)
    request_refresh(fetcher)
    until(lambda: fetcher.metric(PURGES, outcome="purged") > purged, "the change's PURGE")
    # What must go: the served keys of the documents the publish changed, and of the feed.
    documents = sql(database_url, "SELECT documents FROM publishes ORDER BY id DESC")[0][0]
    expected = {key for name in documents for key in served_keys(api, f"/{name}")}
    expected |= served_keys(api, "/v1/changes.json?since=2000-01-01T00:00:00Z")
    assert receiver.keys(before) == expected
    # ... which names the changed state, and no other.
    assert {k for k in expected if k.startswith("state:")} == {f"state:{state}"}
    assert len(receiver.purges()) == before + 1  # one request: the keys fit one header
    assert fetcher.metric(PURGES, outcome="failed") == 0
    assert fetcher.metric("covid_stats_fetcher_purge_duration_seconds_count") == len(
        receiver.purges()
    )


def test_a_failing_receiver_is_retried_and_a_hanging_one_never_delays_the_publish(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    upstream: Upstream,
    database_url: str,
) -> None:
    fetcher = fetcher_factory(env)
    first_purge_done(fetcher)
    receiver.plan = [503, 500]  # the change's next two PURGEs fail, the third succeeds
    receiver.hold.clear()  # and the first of them hangs until the test releases it
    before = len(receiver.purges())
    published = fetcher.metric("covid_stats_fetcher_snapshots_published_total")
    change_one_state(upstream)
    request_refresh(fetcher)
    until(receiver.holding.is_set, "the PURGE to be in flight")
    # The receiver has not answered, yet the publish is done and logged.
    until(
        lambda: fetcher.metric("covid_stats_fetcher_snapshots_published_total") > published,
        "the publish, while the PURGE hangs",
    )
    until(lambda: len(sql(database_url, "SELECT id FROM publishes")) == 2, "the publish log")
    assert fetcher.metric("covid_stats_fetcher_purge_keys_pending") > 0
    receiver.hold.set()
    until(lambda: fetcher.metric("covid_stats_fetcher_purge_keys_pending") == 0, "the retries")
    attempts = receiver.purges()[before:]
    assert len(attempts) == 3
    assert len({p.keys for p in attempts}) == 1  # the same keys, tried again
    assert fetcher.metric(PURGES, outcome="failed") == 2


def test_a_new_leader_takes_up_the_purge_a_dead_leader_left(
    env: dict[str, str],
    receiver: Receiver,
    fetcher_factory: Callable[..., Fetcher],
    upstream: Upstream,
) -> None:
    """The leader dies (SIGKILL) while its PURGE hangs: the keys it had yet to purge wait in
    Redis, and the follower, once it leads, purges them."""
    ha = {**env, "LEADER_LEASE_SECONDS": "1.5"}
    first = fetcher_factory(ha, "first")
    until(first.is_leader, "the first fetcher to lead")
    first_purge_done(first)
    second = fetcher_factory(ha, "second")
    assert not second.is_leader()
    receiver.hold.clear()
    before = len(receiver.purges())
    change_one_state(upstream)
    request_refresh(second)  # relayed to the leader
    until(receiver.holding.is_set, "the leader's PURGE to be in flight")
    held = receiver.purges()[before:]
    assert len(held) == 1
    os.kill(first.process.proc.pid, signal.SIGKILL)
    until(second.is_leader, "the follower to lead")
    receiver.hold.set()
    until(lambda: second.metric(PURGES, outcome="purged") > 0, "the follower's purge")
    until(lambda: second.metric("covid_stats_fetcher_purge_keys_pending") == 0, "its purge")
    taken_up = receiver.keys(before + 1)
    assert set(held[0].keys.split(" ")) <= taken_up


@pytest.fixture
def two_replicas() -> Iterator[tuple[Receiver, Receiver]]:
    """Two edge replicas on one port, at two loopback addresses (as the pods behind a
    headless Service)."""
    first = Receiver("127.0.0.1")
    try:
        second = Receiver("127.0.0.2", first.port)
    except OSError:
        first.close()
        pytest.skip("127.0.0.2 is not a loopback address here")
    yield first, second
    first.close()
    second.close()


def test_every_address_of_the_host_is_purged_in_bounded_batches_at_each_repeat(
    two_replicas: tuple[Receiver, Receiver],
) -> None:
    """The purger itself (in process), against two real receivers. Stand-in: the name's
    resolution. A name with two addresses (a headless Service) needs a DNS server or an
    /etc/hosts entry, which a test on a shared machine must not change; so the resolver
    given answers both loopback addresses for the URL's name. Everything else is real."""
    first = two_replicas[0]
    settings = Settings.model_construct(
        purge_urls=f"http://edge.test:{first.port}/purge",
        purge_timeout_seconds=5.0,
        purge_retry_initial_seconds=0.1,
        purge_retry_max_seconds=0.5,
        purge_repeat_seconds="0.2,0.4",
    )
    resolved: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1", "127.0.0.2"]

    keys = [f"v1/states/s{i:03d}/daily.json" for i in range(400)]  # about 11 KiB
    batches = len(purge_batches(keys))
    assert batches > 1

    async def run() -> None:
        stopping = asyncio.Event()
        purger = Purger(settings, lambda: True, resolve)
        sender = asyncio.create_task(purger.run(stopping))
        try:
            purger.purge(keys)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while any(len(r.purges()) < 3 * batches for r in two_replicas) or any(
                purger.pending.values()
            ):
                assert loop.time() < deadline, "the purges (three times) within 30 s"
                await asyncio.sleep(0.05)
        finally:
            stopping.set()
            await sender
            await purger.close()

    asyncio.run(run())
    for replica in two_replicas:
        purges = replica.purges()
        assert all(len(p.keys.encode()) <= PURGE_HEADER_MAX_BYTES for p in purges)
        assert {(p.method, p.path, p.host) for p in purges} == {
            (PURGE_METHOD, "/purge", f"edge.test:{first.port}")
        }
        # at once and at each of the two repeats, each time every key once, in order
        sent = [key for p in purges for key in p.keys.split(" ")]
        assert sent == keys + keys + keys
    assert set(resolved) == {"edge.test"}


def test_refresh_once_sends_its_publishs_purge_before_it_exits(
    env: dict[str, str], receiver: Receiver
) -> None:
    """No sender outlives the command: its first publish's keys (every document's, and every
    state's) reach the receiver before it exits."""
    result = run_fetcher("refresh-once", env)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    keys = receiver.keys()
    assert {"v1/status.json", "v1/states/daily.json", CHANGES_KEY} <= keys
    assert any(key.startswith(STATE_PREFIX) for key in keys)


def test_refresh_once_waits_for_its_purges_repeats(env: dict[str, str], receiver: Receiver) -> None:
    """An edge that refetched before the api's workers served the new snapshot keeps the old
    bytes until a repeat purges them: ``refresh-once`` exits only after its repeats went."""
    delays = ("1", "2")  # after the first purge went: a drain that stops then is seen
    result = run_fetcher("refresh-once", {**env, "PURGE_REPEAT_SECONDS": ",".join(delays)})
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    sent = [key for purge in receiver.purges() for key in purge.keys.split(" ")]
    assert sent.count(CHANGES_KEY) == 1 + len(delays)


def test_purge_repeats_are_positive_delays() -> None:
    """PURGE_REPEAT_SECONDS is a list of delays: each a positive number of seconds (0 would
    purge again at once, before any worker could switch), sorted; empty: once."""
    assert Settings(purge_repeat_seconds="3, 0.5").purge_repeat_delays == (0.5, 3.0)
    assert Settings(purge_repeat_seconds="").purge_repeat_delays == ()
    for bad in ("0", "-1", "soon", "0.5,,x"):
        with pytest.raises(ValidationError, match=r"repeat delay|number of seconds"):
            Settings(purge_repeat_seconds=bad)


def test_purge_urls_are_http_urls_each_once() -> None:
    """Each address of a URL's host is sent its PURGE, so no TLS name could be checked: an
    https URL (or anything but an http URL) is refused at start-up, naming the value."""
    for bad in ("https://edge.test/", "edge.test", "http://", "ftp://edge.test/"):
        with pytest.raises(ValidationError, match="not an http URL"):
            Settings(purge_urls=bad)
    given = " http://a.test:6081/ , http://b.test/,http://a.test:6081/"
    assert Settings(purge_urls=given).purge_url_list == ("http://a.test:6081/", "http://b.test/")
