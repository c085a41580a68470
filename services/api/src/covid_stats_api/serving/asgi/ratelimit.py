"""An optional per-client rate limit, counted across workers and pods in Redis.

Off by default (``RATE_LIMIT_PER_MINUTE=0``): then this layer is not installed at all and
costs nothing. On, it is the outermost layer after the request metrics, in front of the fast
path, so hot documents are limited like everything else; the probes (``/healthz``,
``/readyz``) never are (``/metrics`` is not on this port: see ``metrics_server``).

The algorithm is GCRA (the generic cell rate algorithm, "leaky bucket as a meter"): per
client one Redis key holds a theoretical arrival time, and one Lua script run reads the
server's clock, decides and moves that time, atomically and in one round trip whichever
worker or pod asks. A client may send ``RATE_LIMIT_PER_MINUTE`` requests at once, then one
every ``60 / RATE_LIMIT_PER_MINUTE`` seconds. Unlike a fixed window (INCR + EXPIRE) it does
not let twice the limit through across a window's edge, it needs no clock agreement between
workers (Redis's clock is the only one), and it knows exactly when the next request would
pass: that is the 429's ``Retry-After``. The key expires when the client's bucket is empty
again, so Redis holds one small key per client active in the last minute. A refused client
is also remembered in the worker until its wait is over, and refused from memory meanwhile:
exact (a client's arrival time only ever moves later, and only when a request passes) and
cheap, so a client flooding the api costs no Redis round trip per request.

The client is the peer address, or the address the ``X-Forwarded-For`` header names when the
peer is one of ``FORWARDED_ALLOW_IPS`` (uvicorn's proxy headers middleware, run by the
worker before the app, sets it).

When Redis cannot answer, requests pass (fail open: the limit protects the service, an
outage of its cache must not take the service down with it), and for
``_PAUSE_AFTER_ERROR_SECONDS`` after a failure the limit is not asked at all, so an outage
costs one failed call per second per worker, not one per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from covid_stats_api.metrics import rate_limit_check
from covid_stats_runtime.http import error_body, error_headers

log = structlog.get_logger("covid_stats_api.serving.asgi.ratelimit")

# Never limited: the orchestrator's probes.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})

_PAUSE_AFTER_ERROR_SECONDS = 1.0
_MAX_DENIED = 100_000  # refused clients a worker remembers (about 10 MB at most)

# KEYS[1]: the client's key. ARGV[1]: the emission interval T in ms (60000 / limit, rounded
# up: the sustained rate never exceeds the limit), ARGV[2]: the burst tolerance in ms
# (T x limit: bursts of up to `limit` requests).
# Returns 0 when allowed, else the ms until the request would be allowed.
# Times are whole milliseconds: Lua numbers become strings with 14 significant digits.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local wait = new_tat - period - now
if wait > 0 then
  return wait
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return 0
"""

_PERIOD_MS = 60_000


class RateLimit:
    """ASGI layer: 429 for a client over ``per_minute`` requests per minute."""

    def __init__(
        self,
        app: ASGIApp,
        redis: Callable[[], Redis],
        key_prefix: str,
        per_minute: int,
    ) -> None:
        self.app = app
        self.redis = redis  # the worker's client, known once the app's lifespan has run
        self.key_prefix = f"{key_prefix}:ratelimit:"
        self.per_minute = per_minute
        self.interval_ms = -(-_PERIOD_MS // per_minute)  # ceil: whole milliseconds
        self.period_ms = self.interval_ms * per_minute
        self._paused_until = 0.0
        self._script: AsyncScript | None = None
        # Clients refused until a time (monotonic): answered 429 without asking Redis.
        self._denied: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait_ms = await self._check(scope)
        if wait_ms:
            rate_limit_check("limited").inc()
            await self._too_many(send, wait_ms)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> int:
        """0 when the request may pass, else the ms until it would."""
        now = time.monotonic()
        client = scope.get("client")
        address = client[0] if client else "unknown"
        until = self._denied.get(address)
        if until is not None:
            if now < until:
                return math.ceil((until - now) * 1000)
            del self._denied[address]
        if now < self._paused_until:
            rate_limit_check("unavailable").inc()
            return 0
        key = self.key_prefix + address
        try:
            if self._script is None:  # EVALSHA, loading the script when Redis lacks it
                self._script = self.redis().register_script(GCRA_SCRIPT)
            wait = await self._script(keys=[key], args=[self.interval_ms, self.period_ms])
        except (RedisError, OSError, TimeoutError) as exc:
            self._paused_until = now + _PAUSE_AFTER_ERROR_SECONDS
            rate_limit_check("unavailable").inc()
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return 0
        if not wait:
            rate_limit_check("allowed").inc()
            return 0
        self._deny(address, now + int(wait) / 1000)
        return int(wait)

    def _deny(self, address: str, until: float) -> None:
        """Remember that ``address`` is refused until ``until``: exact, since only allowed
        requests move a client's arrival time (later), so nothing can free it sooner."""
        if len(self._denied) >= _MAX_DENIED:
            now = time.monotonic()
            for stale in [a for a, t in self._denied.items() if t <= now]:
                del self._denied[stale]
            if len(self._denied) >= _MAX_DENIED:
                return  # asked to Redis again: still exact, only dearer
        self._denied[address] = until

    async def _too_many(self, send: Send, wait_ms: int) -> None:
        retry_after = max(1, math.ceil(wait_ms / 1000))
        message = (
            f"Too many requests: at most {self.per_minute} per minute per client. "
            f"Retry after {retry_after} s."
        )
        body = error_body(429, "rate_limited", message)
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": error_headers(
                    429,
                    body,
                    (b"retry-after", str(retry_after).encode()),
                    (b"access-control-allow-origin", b"*"),
                    (b"access-control-expose-headers", b"Retry-After"),
                ),
            }
        )
        await send({"type": "http.response.body", "body": body})
