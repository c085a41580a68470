"""``reads.answers.AnswerCache`` against a real Redis: what a question costs in round trips,
and that its fill lock never outlives the fill."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from covid_stats_api.reads.answers import AnswerCache, Uncached
from covid_stats_api.reads.documents import Served
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import CachedAnswer, FillTarget, SnapshotStore

SNAPSHOT = "7"


class CountingRedis(Redis):
    """A real client that counts the commands it sends (each one a round trip here: the
    cache uses no pipeline)."""

    sent: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def _answer(body: bytes) -> Served:
    return Served(body, f'"{len(body)}"', "database", "application/json", b"gz")


async def _cache(redis_url: str) -> tuple[CountingRedis, RedisKeys, AnswerCache]:
    client = CountingRedis.from_url(redis_url)
    assert isinstance(client, CountingRedis)
    client.sent = []
    keys = RedisKeys("answers-test")
    await client.set(keys.current_snapshot, SNAPSHOT)
    return client, keys, AnswerCache(SnapshotStore(client, keys), 60, 1 << 20)


def test_a_miss_costs_three_round_trips_and_a_hit_one(redis_url: str) -> None:
    async def main() -> None:
        client, keys, cache = await _cache(redis_url)
        computed: list[bytes] = []

        async def compute(_target: FillTarget | None) -> Served:
            computed.append(b"[1]\n")
            return _answer(b"[1]\n")

        await cache.get("warm-up", compute)  # the scripts' first load is not a question's
        client.sent.clear()
        served = await cache.get("question", compute)
        # The lookup, the fill lock with a second look, the store with the lock's release.
        assert client.sent == ["EVALSHA"] * 3
        assert served.body == b"[1]\n"
        assert await client.keys("*:fill") == []

        # Another worker (another cache, nothing in flight) finds it in one round trip.
        other = AnswerCache(SnapshotStore(client, keys), 60, 1 << 20)
        client.sent.clear()
        again = await other.get("question", compute)
        assert client.sent == ["EVALSHA"]
        assert (again.body, again.source) == (b"[1]\n", "cache")
        assert len(computed) == 2  # the warm-up and the question, once
        await client.aclose()

    asyncio.run(main())


def test_a_claim_finds_an_answer_stored_after_the_miss_and_takes_no_lock(redis_url: str) -> None:
    async def main() -> None:
        client, keys, cache = await _cache(redis_url)
        store = cache.snapshots
        first = await store.claim_fill(SNAPSHOT, "d", 10_000)
        assert (first.locked, first.answer) == (True, None)
        second = await store.claim_fill(SNAPSHOT, "d", 10_000)
        assert (second.locked, second.answer) == (False, None)  # the first caller fills it
        assert (await store.read_query("d")).answer is None
        stored = CachedAnswer(b"[2]\n", '"2"', "application/json")
        await store.store_query(FillTarget(SNAPSHOT, "d", 60, 1 << 20, True), stored)
        assert not await client.exists(keys.query_fill(SNAPSHOT, "d"))
        third = await store.claim_fill(SNAPSHOT, "d", 10_000)
        assert (third.locked, third.answer) == (False, stored)
        assert not await client.exists(keys.query_fill(SNAPSHOT, "d"))
        await client.aclose()

    asyncio.run(main())


def test_the_fill_lock_goes_when_the_computation_fails_or_is_not_cached(redis_url: str) -> None:
    async def main() -> None:
        client, _, cache = await _cache(redis_url)

        async def fails(_target: FillTarget | None) -> Served:
            raise RuntimeError("the store went away")

        async def empty(_target: FillTarget | None) -> Served:
            raise Uncached(_answer(b"[]\n"))

        with pytest.raises(RuntimeError, match="went away"):
            await cache.get("failed", fails)
        assert (await cache.get("empty", empty)).body == b"[]\n"
        assert await client.keys("*:fill") == []
        assert await cache.snapshots.query_bytes() == 0
        await client.aclose()

    asyncio.run(main())


def test_a_computation_that_stores_its_answer_leaves_the_cache_two_round_trips(
    redis_url: str,
) -> None:
    """A computation process stores the answer it made (``FillTarget``): the worker's cache
    then only looks it up and claims its fill; the lock goes with the process's store."""

    async def main() -> None:
        client, keys, cache = await _cache(redis_url)
        elsewhere = Redis.from_url(redis_url)  # the computation's own connection
        targets: list[FillTarget | None] = []

        async def stores_itself(target: FillTarget | None) -> Served:
            targets.append(target)
            assert target is not None
            answer = CachedAnswer(b"[3]\n", '"3"', "application/json", b"gz")
            evicted = await SnapshotStore(elsewhere, keys).store_query(target, answer)
            return replace(_answer(b"[3]\n"), stored=evicted)

        await cache.get("warm-up", stores_itself)
        client.sent.clear()
        served = await cache.get("question", stores_itself)
        assert client.sent == ["EVALSHA"] * 2  # the lookup, the claim: no store, no unlock
        assert served.stored == 0
        target = targets[-1]
        assert target is not None
        assert (target.snapshot_id, target.release_fill) == (SNAPSHOT, True)
        assert await client.keys("*:fill") == []
        found = (await cache.snapshots.read_query(target.digest)).answer
        assert found is not None
        assert found.body == b"[3]\n"
        await elsewhere.aclose()
        await client.aclose()

    asyncio.run(main())
