"""Purge on publish: after each publish that changed documents, the surrogate keys of what
changed (``covid_stats_contract.edge.purge_keys``) are sent to every ``PURGE_URLS`` URL as
``PURGE <url>`` with ``xkey-purge: <keys>``, in the background (a publish never waits).

- **Every replica of an edge**: each URL's host is resolved to all its addresses (a headless
  Service names every Varnish pod) and each address is sent the request, with the URL's
  ``Host`` header.
- **Bounded headers**: the keys go in batches of at most ``PURGE_HEADER_MAX_BYTES``
  (``edge.purge_batches``): Varnish refuses a header line over ``http_req_hdr_len`` (8 KiB).
- **Retries**: a URL whose purge failed at any address (a non-2xx, a timeout, a connection or
  name resolution error) keeps its keys and is tried again after
  ``PURGE_RETRY_INITIAL_SECONDS`` doubled each failure (+/- 25 % jitter, at most
  ``PURGE_RETRY_MAX_SECONDS``), and at once at the next publish, with that publish's keys:
  a failed purge's keys are carried until they reach every address (purging a key twice is
  harmless; forgetting one leaves old data at the edge until ``Surrogate-Control`` expires).
  The keys are a finite set (the documents' names, the states, the feed): what waits never
  grows past it.
- **Again, later**: each publish's keys are purged again after each of
  ``PURGE_REPEAT_SECONDS``'s delays (0.5 s and 3 s by default). The api's workers serve the
  new snapshot within ``HOT_CACHE_CHECK_SECONDS`` and a refill of its publish; an edge that
  refetched in between stored the old bytes, which a later purge drops (the last delay is
  the margin for a worker slowed down by load). ``refresh-once`` waits for them too.
- **Only the leader purges**: keys are queued by the publish (only the leader publishes) and
  sent while this replica holds the lease. The keys waiting are also kept in Redis (a set
  per URL, ``RedisKeys.purge_pending``), removed once purged: a replica that becomes leader
  takes up what its predecessor left (it died or stalled mid-purge). Redis down: memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from covid_stats_contract.edge import PURGE_KEYS_HEADER, PURGE_METHOD, purge_batches
from covid_stats_contract.keys import RedisKeys
from stats_fetcher import metrics
from stats_fetcher.config import Settings
from stats_fetcher.stores import http_client
from stats_fetcher.webhooks import backoff

log = structlog.get_logger("stats_fetcher.purge")


async def addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6, each once, in resolver order)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


Resolver = Callable[[str, int], Awaitable[list[str]]]

# How long Redis keeps a URL's waiting keys after their last addition (a URL taken out of
# PURGE_URLS leaves no set behind for good).
_PENDING_TTL_SECONDS = 7 * 24 * 3600


class PendingKeys:
    """The keys waiting per URL, in Redis, for the next leader; errors logged, never raised."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def _name(self, url: str) -> str:
        return self.keys.purge_pending(hashlib.sha256(url.encode()).hexdigest()[:16])

    async def add(self, urls: Iterable[str], keys: tuple[str, ...]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for url in urls:
                    pipe.sadd(self._name(url), *keys)
                    pipe.expire(self._name(url), _PENDING_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("purge_pending_not_saved", error=repr(exc))

    async def remove(self, url: str, keys: list[str]) -> None:
        try:
            await self.redis.srem(self._name(url), *keys)
        except (RedisError, OSError) as exc:
            log.warning("purge_pending_not_saved", error=repr(exc))

    async def load(self, url: str) -> list[str]:
        try:
            members = await self.redis.smembers(self._name(url))
        except (RedisError, OSError) as exc:
            log.warning("purge_pending_not_read", error=repr(exc))
            return []
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)


class Purger:
    """Sends queued keys to every ``PURGE_URLS`` URL while ``leading()`` (the service: while
    it holds the leader lease); ``resolve``: a host's addresses (``addresses``)."""

    def __init__(
        self,
        settings: Settings,
        leading: Callable[[], bool],
        resolve: Resolver = addresses,
        saved: PendingKeys | None = None,
    ) -> None:
        self.settings = settings
        self.leading = leading
        self.resolve = resolve
        self.saved = saved
        self._led = False  # whether this replica led at the last pass
        self._saving: set[asyncio.Task[None]] = set()
        self.urls = list(settings.purge_url_list)
        # Per URL: the keys not yet purged at every address (ordered, each once), how many
        # rounds failed in a row, and when (loop time) the next round is due.
        self.pending: dict[str, dict[str, None]] = {url: {} for url in self.urls}
        self._failures = dict.fromkeys(self.urls, 0)
        self._due = dict.fromkeys(self.urls, 0.0)
        self.http = http_client(settings.purge_timeout_seconds, follow_redirects=False)
        self._wake = asyncio.Event()
        self._repeats = 0  # repeats scheduled (call_later) and not yet queued

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    async def close(self) -> None:
        await self.http.aclose()

    def purge(self, keys: Iterable[str]) -> None:
        """Queue ``keys`` for every URL, due now, and again after each of
        ``PURGE_REPEAT_SECONDS``'s delays. Returns at once: the sender sends them."""
        keys = tuple(keys)
        if not self.enabled or not keys:
            return
        self._queue(keys)
        loop = asyncio.get_running_loop()
        for delay in self.settings.purge_repeat_delays:
            self._repeats += 1
            loop.call_later(delay, self._repeat, keys)

    def _repeat(self, keys: tuple[str, ...]) -> None:
        self._repeats -= 1
        self._queue(keys)

    def wake(self) -> None:
        """Look again (this replica became leader: take up what waits in Redis)."""
        self._wake.set()

    def _queue(self, keys: tuple[str, ...]) -> None:
        for url in self.urls:
            self.pending[url].update(dict.fromkeys(keys))
            self._due[url] = 0.0  # a publish's purge goes at once, even while backing off
        if self.saved is not None:
            task = asyncio.create_task(self.saved.add(self.urls, keys))
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)
        self._count_pending()
        self._wake.set()

    async def _take_up(self) -> None:
        """The keys a previous leader left waiting in Redis, due now."""
        if self.saved is None:
            return
        for url in self.urls:
            left = await self.saved.load(url)
            if left:
                self.pending[url].update(dict.fromkeys(left))
                self._due[url] = 0.0
                log.info("purge_taken_up", url=url, keys=len(left))
        self._count_pending()

    def _count_pending(self) -> None:
        metrics.PURGE_PENDING_KEYS.set(sum(len(keys) for keys in self.pending.values()))

    async def run(self, stopping: asyncio.Event) -> None:
        """Send the queued keys while this replica leads, until ``stopping``."""
        loop = asyncio.get_running_loop()
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            while self.enabled and not stopping.is_set():
                waiting = [self._due[url] for url in self.urls if self.pending[url]]
                timeout = max(0.0, min(waiting) - loop.time()) if waiting else None
                if timeout is None or timeout > 0:
                    woken = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait(
                        {woken, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    woken.cancel()
                self._wake.clear()
                await self._pass(stopping)
        finally:
            stopped.cancel()

    async def _pass(self, stopping: asyncio.Event) -> None:
        """Send what is due, if this replica leads."""
        if stopping.is_set():
            return
        leading = self.leading()
        became, self._led = leading and not self._led, leading
        if not leading:
            await asyncio.sleep(0.5)  # keys wait until this replica leads again
            return
        try:
            if became:
                await self._take_up()
            await self.send_due()
        except Exception:  # a bug must not stop the sender: log it, try again
            log.exception("purge_failed_unexpectedly")
            await asyncio.sleep(1.0)

    async def send_due(self) -> None:
        """One round for every URL with keys whose time has come, concurrently."""
        if self._saving:  # saved before they can be removed
            await asyncio.gather(*self._saving, return_exceptions=True)
        now = asyncio.get_running_loop().time()
        due = [url for url in self.urls if self.pending[url] and self._due[url] <= now]
        await asyncio.gather(*(self._round(url) for url in due))

    async def drain(self, seconds: float) -> bool:
        """Send until nothing waits, the repeats included, or ``seconds`` pass
        (``refresh-once``, which exits after its publish). True when every key, repeats
        included, reached every address."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (any(self.pending.values()) or self._repeats) and loop.time() < deadline:
            await self.send_due()
            waiting = [self._due[url] for url in self.urls if self.pending[url]]
            if waiting:
                await asyncio.sleep(max(0.0, min(min(waiting), deadline) - loop.time()))
            elif self._repeats:  # a repeat's keys are queued (and _wake set) when it is due
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))
        return not any(self.pending.values()) and not self._repeats

    async def _round(self, url: str) -> None:
        keys = list(self.pending[url])
        started = time.perf_counter()
        error = await self._purge_everywhere(url, keys)
        loop = asyncio.get_running_loop()
        if error is None:
            for key in keys:  # keys queued meanwhile stay
                self.pending[url].pop(key, None)
            self._failures[url] = 0
            if self.saved is not None:
                await self.saved.remove(url, keys)
            log.info(
                "purged",
                url=url,
                keys=len(keys),
                seconds=round(time.perf_counter() - started, 3),
            )
        else:
            self._failures[url] += 1
            wait = backoff(
                self._failures[url],
                self.settings.purge_retry_initial_seconds,
                self.settings.purge_retry_max_seconds,
            )
            self._due[url] = loop.time() + wait
            log.warning(
                "purge_failed",
                url=url,
                keys=len(keys),
                error=error,
                failures=self._failures[url],
                retry_in=round(wait, 2),
            )
        self._count_pending()

    async def _purge_everywhere(self, url: str, keys: list[str]) -> str | None:
        """Send ``keys`` to every address of ``url``'s host. None when every request was
        answered 2xx, else the first error."""
        parts = urlsplit(url)
        assert parts.hostname is not None  # checked by the settings
        port = parts.port or 80
        try:
            found = await self.resolve(parts.hostname, port)
        except OSError as exc:
            metrics.PURGES.labels("failed").inc()
            return f"resolve: {exc}"
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        batches = purge_batches(keys)
        results = await asyncio.gather(
            *(
                self._purge_address(address, port, parts.netloc, target, batches)
                for address in found
            )
        )
        return next((error for error in results if error is not None), None)

    async def _purge_address(
        self, address: str, port: int, host: str, target: str, batches: list[str]
    ) -> str | None:
        literal = f"[{address}]" if ":" in address else address
        error: str | None = None
        for batch in batches:
            started = time.perf_counter()
            try:
                response = await self.http.request(
                    PURGE_METHOD,
                    f"http://{literal}:{port}{target}",
                    headers={"Host": host, PURGE_KEYS_HEADER: batch},
                )
                failed = (
                    None if 200 <= response.status_code < 300 else f"http_{response.status_code}"
                )
            except httpx.TimeoutException:
                failed = "timeout"
            except httpx.HTTPError as exc:
                failed = f"connection: {type(exc).__name__}"
            metrics.PURGE_DURATION.observe(time.perf_counter() - started)
            metrics.PURGES.labels("purged" if failed is None else "failed").inc()
            if failed is not None:
                error = error or f"{address}: {failed}"
        return error
