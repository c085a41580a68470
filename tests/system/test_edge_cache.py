"""The shared cache: the real varnishd with the repository's VCL (deploy/varnish/default.vcl,
rendered by ``devstack.varnish`` as ``EDGE_CACHE=1 make run`` and the chart render it) in front
of the real api under gunicorn, over published data (a clone of the session's template).

What a user of the edge must be able to count on: a publish that changes one state makes that
state's documents fresh through the cache (the fetcher's ``PURGE``), the other states' stay
cached; documents keep being served while the api is down; nobody outside the purge ACL can
purge; the api's bytes and encodings are kept, live status and credentials are never kept, and
misses of one URL reach the api once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from covid_stats_contract import edge as edge_contract
from covid_stats_contract import resources
from devstack.procs import free_port, wait_until
from devstack.varnish import Varnish
from stacks import Template, loaded_stack
from support import (
    ApiUrl,
    Fetcher,
    Process,
    Upstream,
    check_error_body,
    scratch_dir,
    start_api,
    summary,
)

PURGE, PURGE_KEYS = edge_contract.PURGE_METHOD, edge_contract.PURGE_KEYS_HEADER
# The state a publish changes, and one it does not.
CHANGED, UNCHANGED = "MI", "NY"


@dataclass
class Edge:
    api: ApiUrl
    api_process: Process | None  # the api's, when the test has its own
    varnish: Varnish
    env: dict[str, str]

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.varnish.url}{path}", headers=headers, timeout=30)

    def origin(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", headers=headers, timeout=30)

    def purge(self, keys: str) -> httpx.Response:
        return httpx.request(PURGE, self.varnish.purge_url, headers={PURGE_KEYS: keys}, timeout=10)

    def keys(self, path: str) -> str:
        """The surrogate keys the api serves ``path`` with."""
        return self.origin(path).headers[edge_contract.SURROGATE_KEY_HEADER]


@contextmanager
def edge_in_front(api: ApiUrl, api_process: Process | None, env: dict[str, str]) -> Iterator[Edge]:
    """Varnish with the repository's VCL in front of ``api`` (free ports)."""
    # outside pytest's 0700 base: varnishd, started as root, reads its VCL as its own user
    with scratch_dir("varnish") as workdir:
        varnish = Varnish(
            workdir=Path(workdir),
            http_port=free_port(),
            purge_port=free_port(),
            backend_port=int(api.rsplit(":", 1)[1]),
            memory="64m",
        )
        try:
            varnish.start()
            wait_until(varnish.backend_healthy, 30, interval=0.1, what="Varnish's probe")
            yield Edge(api, api_process, varnish, {**env, "PURGE_URLS": varnish.purge_url})
        finally:
            varnish.stop()


@pytest.fixture(scope="module")
def shared_stack(
    template: Template,
    redis_server_url: str,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ApiUrl, dict[str, str]]]:
    """One api over a clone of the template for the tests that change nothing in it."""
    log_dir = tmp_path_factory.mktemp("edge-api")
    with loaded_stack(template, redis_server_url, upstream_server, log_dir) as stack:
        yield stack


@pytest.fixture
def edge(shared_stack: tuple[ApiUrl, dict[str, str]]) -> Iterator[Edge]:
    """A new Varnish (an empty cache) in front of the module's api."""
    api, env = shared_stack
    with edge_in_front(api, None, env) as made:
        yield made


@pytest.fixture
def own_edge(published_env: dict[str, str], tmp_path: Path) -> Iterator[Edge]:
    """An api of the test's own (it may stop it, or publish into its stores), Varnish in
    front."""
    api_process, api = start_api(published_env, tmp_path)
    try:
        with edge_in_front(api, api_process, published_env) as made:
            yield made
    finally:
        api_process.stop()


def hit(response: httpx.Response) -> bool:
    """Served from the cache: X-Varnish names the request and the object's fetch."""
    return len(response.headers["x-varnish"].split()) == 2


def age(response: httpx.Response) -> int:
    return int(response.headers["age"])


def doc(name: str) -> str:
    return f"/{name}"


STATE_DAILY = doc(resources.STATES_DAILY.state_document(CHANGED))
OTHER_DAILY = doc(resources.STATES_DAILY.state_document(UNCHANGED))
OTHER_CURRENT = doc(resources.STATES_CURRENT.state_document(UNCHANGED))
STATES_DAILY = doc(resources.STATES_DAILY.document())
US_CURRENT = doc(resources.US_CURRENT.document())


def test_documents_are_kept_with_the_apis_bytes_and_encodings(edge: Edge) -> None:
    for coding in ("br", "gzip", "identity"):
        asked = {"Accept-Encoding": coding}
        first, second = edge.get(US_CURRENT, **asked), edge.get(US_CURRENT, **asked)
        origin = edge.origin(US_CURRENT, **asked)
        assert (first.status_code, second.status_code) == (200, 200)
        assert (hit(first), hit(second)) == (False, True), coding
        for response in (first, second):
            # the api's representation, not Varnish's: same coding, same bytes, same validators
            assert response.headers.get("content-encoding") == origin.headers.get(
                "content-encoding"
            ), coding
            assert response.headers["etag"] == origin.headers["etag"]
            assert response.headers["cache-control"] == origin.headers["cache-control"]
            assert response.headers["vary"] == "Accept-Encoding"
            assert response.read() == origin.read()
            # the edge's own headers stop here
            for header in (
                edge_contract.SURROGATE_CONTROL_HEADER,
                edge_contract.SURROGATE_KEY_HEADER,
                "xkey",
            ):
                assert header not in response.headers
    # Accept-Encoding values that ask for the same coding share one copy
    assert hit(edge.get(US_CURRENT, **{"Accept-Encoding": "gzip, deflate, br"}))
    # kept for Surrogate-Control's max-age, and stale for Cache-Control's stale-if-error
    served = edge.origin(US_CURRENT).headers
    assert ttls(edge.varnish, US_CURRENT) == {
        (
            directive(served[edge_contract.SURROGATE_CONTROL_HEADER], "max-age"),
            directive(served["cache-control"], "stale-if-error"),
        )
    }


def directive(header: str, name: str) -> int:
    """A ``name=<seconds>`` directive's value in a Cache-Control-like header."""
    found = re.search(rf"(?:^|[,\s]){name}=(\d+)", header)
    assert found is not None, (header, name)
    return int(found[1])


def ttls(varnish: Varnish, path: str) -> set[tuple[int, int]]:
    """(TTL, grace) of the copies of ``path`` Varnish kept: the last of each fetch's
    ``TTL VCL`` records in its log."""
    kept = set()
    for fetch in varnish.varnishlog("-g", "request", "-b", "-q", f'BereqURL eq "{path}"').split(
        "\n\n"
    ):
        decided = re.findall(r"TTL\s+VCL (\d+) (\d+) \d+ \d+ cacheable", fetch)
        if decided:
            kept.add((int(decided[-1][0]), int(decided[-1][1])))
    return kept


def test_live_status_and_credentials_are_never_kept(edge: Edge) -> None:
    for path, headers in (
        ("/readyz", {}),
        ("/healthz", {}),
        (US_CURRENT, {"Authorization": "Bearer x"}),
    ):
        answers = [edge.get(path, **headers) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], path
        assert not any(hit(a) for a in answers), path


def test_misses_of_one_url_reach_the_api_once(edge: Edge) -> None:
    before = edge.varnish.counters("MAIN.backend_req")["MAIN.backend_req"]
    results: list[httpx.Response] = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        barrier.wait()
        results.append(edge.get(STATES_DAILY, **{"Accept-Encoding": "identity"}))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = edge.varnish.counters("MAIN.backend_req")["MAIN.backend_req"]
    assert {r.status_code for r in results} == {200}
    assert len({r.content for r in results}) == 1
    assert after - before == 1
    assert sum(not hit(r) for r in results) == 1


def test_purge_is_accepted_on_the_purge_listener_from_the_acl_only(edge: Edge) -> None:
    keys = edge.keys(US_CURRENT)
    assert hit(edge.get(US_CURRENT)) is False
    assert hit(edge.get(US_CURRENT))

    # from outside the ACL (127.0.0.2 is not in it): refused, nothing purged
    outside = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=outside, timeout=10) as client:
        refused = client.request(PURGE, edge.varnish.purge_url, headers={PURGE_KEYS: keys})
        assert refused.status_code == 403
        check_error_body(refused.content, 403, "forbidden")
        other = client.get(f"{edge.varnish.purge_url}v1/us/current.json")
        assert other.status_code == 403
    assert hit(edge.get(US_CURRENT))

    # on the public listener, even from loopback: not a method it takes
    public = httpx.request(
        PURGE, f"{edge.varnish.url}{US_CURRENT}", headers={PURGE_KEYS: keys}, timeout=10
    )
    assert public.status_code == 405
    check_error_body(public.content, 405, "method_not_allowed")
    assert hit(edge.get(US_CURRENT))

    # no keys named
    missing = httpx.request(PURGE, edge.varnish.purge_url, timeout=10)
    assert missing.status_code == 400
    check_error_body(missing.content, 400, "missing_header")

    # from the ACL on the purge listener: purged, fetched again
    accepted = edge.purge(keys)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["purged"] >= 1
    again = edge.get(US_CURRENT)
    assert (again.status_code, hit(again)) == (200, False)


def test_cached_documents_are_served_while_the_api_is_down(own_edge: Edge) -> None:
    edge = own_edge
    assert edge.api_process is not None
    kept = {path: edge.get(path).content for path in (US_CURRENT, OTHER_CURRENT)}
    assert all(hit(edge.get(path)) for path in kept)
    keys = edge.keys(US_CURRENT)
    edge.api_process.stop()

    # kept copies are served as they are
    assert edge.get(OTHER_CURRENT).content == kept[OTHER_CURRENT]
    # a purged one too, stale, while the api cannot give a fresh one: before the probe
    # notices (the failed fetch is retried on the stale copy) ...
    assert edge.purge(keys).json()["purged"] >= 1
    stale = edge.get(US_CURRENT)
    assert (stale.status_code, stale.content) == (200, kept[US_CURRENT])
    # ... and after (the probe says the api is sick)
    wait_until(lambda: not edge.varnish.backend_healthy(), 30, interval=0.2, what="the probe: sick")
    for path, body in kept.items():
        served = edge.get(path)
        assert (served.status_code, served.content) == (200, body), path
    # a document the cache never held: the error shape, not kept
    never = edge.get(OTHER_DAILY)
    assert never.status_code == 503
    assert never.headers["cache-control"] == "no-store"
    check_error_body(never.content, 503, "backend_unavailable")


def _published_at(edge: Edge, since: str) -> datetime:
    response = httpx.get(f"{edge.api}/v1/changes.json", params={"since": since}, timeout=30)
    assert response.status_code == 200, response.text
    feed = response.json()["changes"]
    assert len(feed) == 1, feed
    return datetime.fromisoformat(feed[0]["published_at"].replace("Z", "+00:00"))


def test_a_publish_makes_the_changed_states_documents_fresh_and_keeps_the_others(
    own_edge: Edge, upstream: Upstream, fetcher_factory: Callable[..., Fetcher]
) -> None:
    edge = own_edge
    changed = (STATE_DAILY, STATES_DAILY)
    unchanged = (OTHER_DAILY, OTHER_CURRENT)
    for path in (*changed, *unchanged):
        edge.get(path)
    warm = {path: edge.get(path) for path in (*changed, *unchanged)}
    assert all(hit(r) for r in warm.values())
    origin_before = {path: edge.origin(path).content for path in changed}
    # The fetcher service, as deployed (its purge, and the purge's repeat), purging Varnish.
    fetcher = fetcher_factory({**edge.env, "FETCH_INTERVAL_SECONDS": "3600"})
    wait_until(fetcher.is_leader, 60, interval=0.1, what="the fetcher to lead")

    # The upstream revises one of Michigan's days; the fetcher publishes it and purges.
    daily: list[dict[str, Any]] = json.loads(upstream.get("/v1/states/daily.json").content)
    oldest = min((r for r in daily if r["state"] == CHANGED), key=lambda r: r["date"])
    oldest["positive"] = (oldest["positive"] or 0) + 5
    upstream.fault("/v1/states/daily.json", "body", body=daily)
    since = datetime.now().astimezone().isoformat()
    asked = httpx.post(
        f"{fetcher.url}/refresh", headers={"Authorization": f"Bearer {fetcher.token}"}
    )
    assert asked.status_code == 202, asked.text
    # poll the changed state's document through the cache until it changes
    wait_until(
        lambda: edge.get(STATE_DAILY).content != warm[STATE_DAILY].content,
        120,
        interval=0.005,
        what="the changed state's document to change through the cache",
    )
    fresh_at = time.time()
    purge_to_fresh = fresh_at - _published_at(edge, since).timestamp()
    summary(
        f"edge cache: publish -> {CHANGED}'s daily fresh through Varnish: {purge_to_fresh:.3f} s"
    )
    assert purge_to_fresh < 10  # the figure is 1 s; measured, reported above

    # still fresh a while later: a purge that raced the api's workers (they switch snapshots
    # within HOT_CACHE_CHECK_SECONDS) would leave the old document in the cache
    settle = time.monotonic() + 2
    while time.monotonic() < settle:
        edge.get(STATE_DAILY)
        time.sleep(0.01)
    # every changed document is the api's new one through the cache
    for path in changed:
        now = edge.origin(path).content
        assert now != origin_before[path], path
        assert edge.get(path).content == now, path
    # the other state's documents were not purged: still the copies from before the publish,
    # hits, older than when first kept
    for path in unchanged:

        def older(path: str = path) -> bool:
            response = edge.get(path)
            assert hit(response), path
            assert response.content == warm[path].content, path
            return age(response) > age(warm[path])

        wait_until(older, 10, interval=0.1, what=f"{path}'s Age to grow")
