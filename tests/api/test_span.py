"""``reads.span.SpanService`` against a real Redis: which snapshot's span a question is
measured against, and what finding it costs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace
from typing import cast

from covid_stats_api.core.stores import Stores
from covid_stats_api.reads.hot import HotCache
from covid_stats_api.reads.span import SpanService
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import SnapshotStore
from covid_stats_runtime.http import CachePolicy
from test_answer_cache import CountingRedis
from test_canonical import SPAN


def test_the_span_follows_the_hot_tiers_snapshot_without_a_redis_read_per_question(
    redis_url: str,
) -> None:
    async def main() -> None:
        client = CountingRedis.from_url(redis_url)
        assert isinstance(client, CountingRedis)
        client.sent = []
        keys = RedisKeys("span-test")
        later = replace(SPAN, states=frozenset({"CA"}))
        await client.set(keys.current_snapshot, "1")
        await client.set(keys.snapshot_span("1"), SPAN.to_json())
        await client.set(keys.snapshot_span("2"), later.to_json())
        stores = cast(
            "Stores", SimpleNamespace(redis=client, snapshots=SnapshotStore(client, keys))
        )
        hot = HotCache(0, CachePolicy(60), 5.0)
        service = SpanService(stores, 60, hot)

        # Before the hot tier has seen a snapshot: the one Redis points to, read each time.
        assert await service.get() == SPAN
        client.sent.clear()
        assert await service.get() == SPAN
        assert client.sent == ["GET"]

        # Once it has: no Redis read at all while the span is held.
        hot.version, hot.published_at = "1", 1000.0
        assert await service.get() == SPAN  # read once more: held under the tier's snapshot
        client.sent.clear()
        for _ in range(3):
            assert await service.get() == SPAN
        assert client.sent == []

        # A new snapshot, as the tier's watcher sees it: its span, read once.
        hot.version = "2"
        assert await service.get() == later
        assert client.sent == ["GET"]
        # The same id published again (a Redis that lost its data counts from 1 again): the
        # publish time tells them apart.
        await client.set(keys.snapshot_span("2"), SPAN.to_json())
        hot.published_at = 2000.0
        assert await service.get() == SPAN
        await client.aclose()

    asyncio.run(main())
