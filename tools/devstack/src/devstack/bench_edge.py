"""``make bench``'s edge part: Varnish (``deploy/varnish/default.vcl``) on one core in front of
the one-core api, beside nginx, and the purge-to-fresh time.

- (e) Varnish 7.1 with the repository's VCL (``devstack.varnish``), pinned to CPU 0 like the
  api and nginx, in front of the bench's api: req/s and p99 per document as the other
  scenarios are measured, and its hit rate over those runs (varnishstat's ``MAIN.cache_hit``
  and ``MAIN.cache_miss``);
- purge-to-fresh: a publish that changes one state (the upstream revises one of its days),
  through the real fetcher service (``stats-fetcher run`` with ``PURGE_URLS`` at Varnish's
  purge listener, asked to refresh by ``POST /refresh``), until that state's document served
  by Varnish is the new one: from the publish (its ``published_at`` in the changes feed) to
  the first fresh answer, several samples, median and max. A client polls the document every
  few milliseconds throughout, as traffic would; after each sample, the cache must still hold
  the new document a while later (a purge that raced the api's workers would leave the old one
  in, for ``Surrogate-Control``'s max-age).
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from covid_stats_contract import resources
from devstack.procs import free_port, pdeathsig_preexec, tail, terminate, wait_until
from devstack.varnish import Varnish, varnishd_binary

# The state whose day the purge-to-fresh samples revise, and its document.
STATE = "MI"
STATE_DAILY = "/" + resources.STATES_DAILY.state_document(STATE)
UPSTREAM_DAILY = resources.STATES_DAILY.upstream_path()
IDENTITY = {"Accept-Encoding": "identity"}
SETTLE_SECONDS = 2.0  # after a sample: the cache must still hold the new document


@dataclass
class PurgeSamples:
    seconds: list[float] = field(default_factory=list)  # publish -> fresh through Varnish
    stale_after: int = 0  # samples where the old document was back in the cache later


def start(state: Path, api_port: int, pin: bool) -> Varnish:
    """Varnish on CPU 0 (when pinning) in front of the api on ``api_port``."""
    workdir = state / "varnish"
    workdir.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)  # varnishd, started as root, reads its VCL as its own user
    varnish = Varnish(
        workdir=workdir,
        http_port=free_port(),
        purge_port=free_port(),
        backend_port=api_port,
        cpu=0 if pin else None,
    )
    varnish.start()
    wait_until(varnish.backend_healthy, 30, interval=0.1, what="Varnish's probe of the api")
    return varnish


def check(varnish: Varnish, served: dict[str, tuple[bytes, str]]) -> None:
    """Varnish sends byte for byte what the api sends, and keeps it (the second is a hit)."""
    for path, (body, content_type) in served.items():
        for _ in range(2):
            response = httpx.get(f"{varnish.url}{path}", headers=IDENTITY)
            assert response.status_code == 200, f"(e) Varnish {path}: {response.status_code}"
            assert response.content == body, f"(e) Varnish does not send (b)'s bytes for {path}"
            assert response.headers.get("content-type") == content_type
        assert len(response.headers["x-varnish"].split()) == 2, f"(e) Varnish keeps no {path}"


def hit_rate(before: dict[str, int], after: dict[str, int]) -> tuple[float, int]:
    """The hit rate between two readings of the counters, and the lookups it counts."""
    hits = after["MAIN.cache_hit"] - before["MAIN.cache_hit"]
    misses = after["MAIN.cache_miss"] - before["MAIN.cache_miss"]
    total = hits + misses
    return (hits / total if total else float("nan")), total


def counters(varnish: Varnish) -> dict[str, int]:
    return varnish.counters("MAIN.cache_hit", "MAIN.cache_miss")


def purge_to_fresh(
    varnish: Varnish, api: str, env: dict[str, str], upstream: str, samples: int
) -> PurgeSamples:
    """``samples`` publishes, each revising one of ``STATE``'s days at the upstream (its
    control API's body fault), each timed from the publish to the fresh document. The
    publishes are the fetcher service's (``stats-fetcher run``, as deployed: its purge and
    the purge.s repeats ``PURGE_REPEAT_SECONDS`` later), asked for by ``POST /refresh``."""
    found = PurgeSamples()
    daily: list[dict[str, Any]] = json.loads(httpx.get(f"{upstream}{UPSTREAM_DAILY}").content)
    oldest = min((r for r in daily if r["state"] == STATE), key=lambda r: r["date"])
    base = oldest["positive"] or 0
    token = secrets.token_urlsafe(24)
    port = free_port()
    fetcher_url = f"http://127.0.0.1:{port}"
    fetcher_env = {
        **env,
        "PURGE_URLS": varnish.purge_url,
        "LOG_LEVEL": "INFO",
        "FETCHER_HOST": "127.0.0.1",
        "FETCHER_PORT": str(port),
        "REFRESH_TOKEN": token,
        "FETCH_INTERVAL_SECONDS": "3600",  # only the refreshes asked for
    }
    bearer = {"Authorization": f"Bearer {token}"}
    log = varnish.workdir.parent / "purge-fetcher.log"
    with log.open("ab") as out:
        fetcher = subprocess.Popen(
            [sys.executable, "-m", "stats_fetcher", "run"],
            env=fetcher_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),
        )

    def leading() -> bool:
        if fetcher.poll() is not None:
            raise RuntimeError(f"the fetcher exited ({fetcher.returncode}):\n{tail(log)}")
        try:
            ready = httpx.get(f"{fetcher_url}/readyz", headers=bearer, timeout=2)
            return ready.status_code == 200 and bool(ready.json().get("leader"))
        except httpx.HTTPError:
            return False

    try:
        wait_until(leading, 120, interval=0.2, what="the fetcher to lead")
        for sample in range(samples):
            found.seconds.append(
                _sample(varnish, api, fetcher_url, bearer, upstream, daily, oldest, base, sample)
            )
            # still the new document a while later, as the api sends it
            settle = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < settle:
                httpx.get(f"{varnish.url}{STATE_DAILY}", headers=IDENTITY)
                time.sleep(0.01)
            now = httpx.get(f"{api}{STATE_DAILY}", headers=IDENTITY).content
            if httpx.get(f"{varnish.url}{STATE_DAILY}", headers=IDENTITY).content != now:
                found.stale_after += 1
    finally:
        terminate(fetcher)
        httpx.delete(f"{upstream}/_control/faults", timeout=30).raise_for_status()
    return found


def _sample(
    varnish: Varnish,
    api: str,
    fetcher_url: str,
    bearer: dict[str, str],
    upstream: str,
    daily: list[dict[str, Any]],
    oldest: dict[str, Any],
    base: int,
    sample: int,
) -> float:
    """One publish changing ``STATE``: seconds from its publish to the fresh document."""
    old = httpx.get(f"{varnish.url}{STATE_DAILY}", headers=IDENTITY).content
    assert httpx.get(f"{varnish.url}{STATE_DAILY}", headers=IDENTITY).content == old
    oldest["positive"] = base + 5 * (sample + 1)
    fault = {"path": UPSTREAM_DAILY, "fault": "body", "body": daily}
    httpx.put(f"{upstream}/_control/faults", json=fault, timeout=60).raise_for_status()
    since = datetime.now(UTC).isoformat()
    asked = httpx.post(f"{fetcher_url}/refresh", headers=bearer, timeout=30)
    assert asked.status_code == 202, asked.text
    fresh_at: float | None = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = httpx.get(f"{varnish.url}{STATE_DAILY}", headers=IDENTITY)
        if answer.status_code == 200 and answer.content != old:
            fresh_at = time.time()
            break
        time.sleep(0.002)
    if fresh_at is None:
        raise RuntimeError(f"{STATE_DAILY} never changed through Varnish after a publish")
    feed = httpx.get(f"{api}/v1/changes.json", params={"since": since}, timeout=30)
    feed.raise_for_status()
    published = feed.json()["changes"][-1]["published_at"].replace("Z", "+00:00")
    return fresh_at - datetime.fromisoformat(published).timestamp()


def report(
    rows: list[tuple[str, float, float, float, float]],
    rate: tuple[float, int],
    purges: PurgeSamples | None,
    version: str,
) -> None:
    """rows: (document, project req/s, nginx req/s, Varnish req/s, Varnish p99 seconds)."""
    hits, lookups = rate
    print(
        f"\nThe edge: {version}, one core, in front of the one-core api, beside nginx; req/s at "
        f"64 connections (medians of the rounds above). Hit rate over its runs: {hits:.4%} of "
        f"{lookups:,} lookups (varnishstat MAIN.cache_hit / (cache_hit + cache_miss)).\n\n"
        "| document | (b) api | (d) nginx | (e) Varnish | Varnish p99 ms | Varnish/nginx "
        "| Varnish/api |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for path, api_rps, nginx_rps, edge_rps, p99 in rows:
        print(
            f"| {path} | {api_rps:,.0f} | {nginx_rps:,.0f} | {edge_rps:,.0f} | {p99 * 1000:.2f} "
            f"| {edge_rps / nginx_rps:.2f} | {edge_rps / api_rps:.2f} |"
        )
    if purges is not None and purges.seconds:
        ms = sorted(s * 1000 for s in purges.seconds)
        print(
            f"\nPurge-to-fresh ({len(ms)} publishes changing {STATE}, {STATE_DAILY} polled "
            f"through Varnish every ~2 ms): median {statistics.median(ms):.0f} ms, max "
            f"{ms[-1]:.0f} ms (each: {', '.join(f'{m:.0f}' for m in ms)} ms); old document "
            f"back in the cache {SETTLE_SECONDS:g} s later: {purges.stale_after} of {len(ms)}."
        )


def version() -> str:
    """``varnish-7.1.1``, as ``varnishd -V`` names itself."""
    out = subprocess.run(
        [varnishd_binary() or "varnishd", "-V"], capture_output=True, text=True, check=False
    )
    first = (out.stderr or out.stdout).splitlines()[0] if (out.stderr or out.stdout) else ""
    return first.split(" (")[1].split(" revision")[0] if " (" in first else "varnishd"
