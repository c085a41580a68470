"""Leader election: a lease in Redis, so exactly one fetcher replica refreshes.

The lease is one key holding ``"<fencing token>:<holder id>"`` with a TTL. Acquiring takes a
new token from a counter (tokens only grow) and sets the key if nobody holds it, in one
script; the holder renews it well before it expires, again in a script that checks it still
holds it. The publish script refuses a snapshot whose publisher's lease value is no longer
current, so a leader that stalled past its lease cannot overwrite its successor's work. When
the leader dies, its lease expires and a follower takes it within one lease period plus one
attempt interval (a third of the lease).
"""

from __future__ import annotations

from redis.asyncio import Redis

from covid_stats_contract.keys import RedisKeys

_ACQUIRE = """
-- KEYS[1]: lease, KEYS[2]: token counter. ARGV[1]: holder id, ARGV[2]: lease ms.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local value = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""

_RENEW = """
-- KEYS[1]: lease. ARGV[1]: the holder's lease value, ARGV[2]: lease ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaderLease:
    def __init__(self, redis: Redis, keys: RedisKeys, holder: str, lease_seconds: float) -> None:
        self.keys = keys
        self.holder = holder
        self.lease_ms = int(lease_seconds * 1000)
        self.value: str | None = None  # the lease value while held: the fencing value
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return self.value is not None

    async def keep(self) -> bool:
        """Renew the lease if held, else try to acquire it. True while this process holds
        it. A Redis error propagates after the lease is marked lost: a leader that cannot
        reach Redis cannot prove it still leads."""
        try:
            if self.value is not None:
                renewed = await self._renew(
                    keys=[self.keys.leader], args=[self.value, self.lease_ms]
                )
                if not renewed:
                    self.value = None
            if self.value is None:
                value = await self._acquire(
                    keys=[self.keys.leader, self.keys.leader_token],
                    args=[self.holder, self.lease_ms],
                )
                self.value = value.decode() if isinstance(value, bytes) else value
        except Exception:
            self.value = None
            raise
        return self.value is not None

    async def release(self) -> None:
        if self.value is not None:
            await self._release(keys=[self.keys.leader], args=[self.value])
            self.value = None
