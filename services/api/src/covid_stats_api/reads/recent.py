"""Each worker's recent query answers, in memory: a byte-bounded LRU in front of Redis.

A warm query answered from Redis costs a round trip and FastAPI's routing and validation; a
hot document costs neither (the fast path). ``RecentAnswers`` keeps the last answers a
worker sent, ready to send (``Representation``: identity and gzip bodies, ETag, headers),
keyed as the Redis cache keys them (``Query.key`` of the canonical question,
``reads.canonical``), and tagged with the snapshot they belong to:

- ``Api.answer`` looks a question up here before Redis, and keeps what it sends; concurrent
  misses of one key share one Redis lookup and at most one computation
  (``AnswerCache.get``'s single-flight);
- the request target (path and query string, as the client spelled them) that led to an
  answer is kept with it, so the fast path (``serving.asgi.fastpath``) answers the same
  target again without FastAPI, as it answers a hot document;
- a new publish drops them all: the hot tier's watcher, which learns of it
  (``reads.hot.HotWatcher``), clears this too, and an entry of another snapshot than the
  one the hot tier holds is never served;
- ``QUERY_MEMORY_CACHE_MAX_BYTES`` bounds the bytes (bodies, headers, keys and targets):
  least recently used answers go first (0 turns the tier off).

Only answers of the current data are kept (never a question ``as_of`` an instant, an error,
or an answer while the snapshot is unknown).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from covid_stats_api.metrics import cache_lookup, query_memory_bytes, query_memory_evicted
from covid_stats_runtime.http import Representation

TIER = "query-memory"  # the cache lookups' tier label
# Bytes counted for an entry beyond its bodies and texts: header lists, objects, dict slots.
_OVERHEAD = 1024
_TARGET_OVERHEAD = 128

Target = tuple[str, bytes]  # the request's path and raw query string

# The ASGI scope of the request being answered, when it has a query string (set by the fast
# path before FastAPI answers it): the target and route an answer is kept with.
current_request: ContextVar[MutableMapping[str, Any]] = ContextVar("current_request")


@dataclass(slots=True)
class RecentAnswer:
    representation: Representation
    version: str  # the snapshot id it belongs to
    size: int  # bytes counted: its bodies, key and targets
    targets: list[Target] = field(default_factory=list)


def _target_size(target: Target) -> int:
    return len(target[0]) + len(target[1]) + _TARGET_OVERHEAD


class RecentAnswers:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, RecentAnswer] = OrderedDict()
        # request target -> (key, the route template that answered it)
        self._targets: dict[Target, tuple[str, str]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held(self) -> int:
        return self._bytes

    def get(self, key: str, version: str) -> RecentAnswer | None:
        """The answer kept under ``key`` for snapshot ``version``, counted (hit or miss)."""
        entry = self._use(key, version)
        if entry is None:
            cache_lookup(TIER, "miss").inc()
        return entry

    def _use(self, key: str, version: str) -> RecentAnswer | None:
        """The answer under ``key`` if it is of snapshot ``version``, then the most recently
        used, its hit counted."""
        entry = self._entries.get(key)
        if entry is None or entry.version != version:
            return None
        self._entries.move_to_end(key)
        cache_lookup(TIER, "hit").inc()
        return entry

    def find(
        self, path: str, query_string: bytes, version: str | None
    ) -> tuple[str, Representation] | None:
        """(route template, answer) a request target led to, when that answer is of
        snapshot ``version`` (the fast path's lookup: counted only when found)."""
        found = self._targets.get((path, query_string))
        if found is None or version is None:
            return None
        key, route = found
        entry = self._use(key, version)
        return None if entry is None else (route, entry.representation)

    def put(
        self,
        key: str,
        representation: Representation,
        version: str,
        target: Target | None = None,
        route: str | None = None,
    ) -> None:
        """Keep ``representation`` under ``key`` for snapshot ``version``, and ``target``,
        answered by ``route``, as a way to it (both given: else none)."""
        if self.max_bytes <= 0:
            return
        entry = self._entries.get(key)
        if entry is None or entry.version != version:
            self._drop(key)
            size = len(representation.body) + len(representation.gzip) + len(representation.br)
            entry = RecentAnswer(representation, version, size + len(key) + _OVERHEAD)
            if entry.size > self.max_bytes:
                return
            self._entries[key] = entry
            self._bytes += entry.size
        else:
            self._entries.move_to_end(key)
        if target is not None and route is not None and target not in self._targets:
            self._targets[target] = (key, route)
            entry.targets.append(target)
            entry.size += _target_size(target)
            self._bytes += _target_size(target)
        evicted = 0
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            evicted += 1
        if evicted:
            query_memory_evicted().inc(evicted)
        query_memory_bytes().set(self._bytes)

    def clear(self) -> None:
        """Drop every answer (a new publish)."""
        self._entries.clear()
        self._targets.clear()
        self._bytes = 0
        query_memory_bytes().set(0)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        for target in entry.targets:
            del self._targets[target]
