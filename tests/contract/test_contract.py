"""The shared contract against real Redis and PostgreSQL: snapshots, rendering, migrations."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import asyncpg
import brotli  # type: ignore[import-untyped]  # no stubs published
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from conftest import archive_only
from covid_stats_contract import schema
from covid_stats_contract.documents import (
    BROTLI_BEST_MAX_BYTES,
    COMPRESSION,
    GZIP_MIN_BYTES,
    Compressed,
    DocumentBody,
    content_hash,
    encode_record,
    etag_for,
    render_array,
    render_object,
    state_current_name,
)
from covid_stats_contract.keys import RedisKeys
from covid_stats_contract.snapshots import PENDING_TTL_SECONDS, SnapshotStore
from support import ARCHIVE

pytestmark = pytest.mark.unit  # `make test-fast`

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def test_render_keeps_key_order_nulls_and_utf8() -> None:
    record = {"z": 1, "a": None, "name": "Niños", "grade": ""}
    assert encode_record(record) == '{"z":1,"a":null,"name":"Niños","grade":""}'
    assert render_array([encode_record(record)] * 2).endswith(b"}]\n")
    assert render_object(encode_record(record)) == (encode_record(record) + "\n").encode()
    assert etag_for(b"x") == etag_for(b"x") != etag_for(b"y")


@archive_only
@pytest.mark.parametrize(
    "name", ["us_current.json", "us_daily.json", "states_current.json", "states_info.json"]
)
def test_render_reproduces_the_upstream_bytes(name: str) -> None:
    raw = (ARCHIVE / name).read_bytes()
    assert render_array(encode_record(r) for r in json.loads(raw)) == raw


@pytest.mark.parametrize("bad", ["", "c", "cal", "c1", "../", "c/"])
def test_state_document_name_rejects_malformed_codes(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid state code"):
        state_current_name(bad)
    assert state_current_name("Ca") == "v1/states/ca/current.json"


def test_compressed_forms_are_deterministic_and_round_trip_through_a_snapshot(
    redis_url: str,
) -> None:
    """gzip and Brotli are rendered once by the fetcher and stored with the document: the
    same body always gives the same bytes (every replica publishes alike), they decompress to
    the body, and a body too small to gain has neither."""
    small, mid, large = b"x" * (GZIP_MIN_BYTES - 1), b"[1,2,3]" * 4000, b"[1,2]" * 60000
    assert len(large) > BROTLI_BEST_MAX_BYTES >= len(mid)
    for body in (mid, large):
        doc = DocumentBody("d", body).compressed()
        assert doc == DocumentBody("d", body).compressed()
        assert gzip.decompress(doc.gzip) == body
        assert brotli.decompress(doc.br) == body
    assert DocumentBody("s", small).compressed().br == b""

    async def scenario() -> None:
        client, store = await _snapshots(redis_url)
        published = DocumentBody("m", mid).compressed()
        await store.publish([published])
        found = (await store.read("m")).document
        assert found is not None
        assert (found.gzip, found.br) == (published.gzip, published.br)
        await client.aclose()

    run(scenario)


def test_a_publish_takes_over_the_compressed_forms_of_unchanged_documents(
    redis_url: str,
) -> None:
    """The snapshot before a publish lends the forms of every document whose bytes did not
    change (``SnapshotStore.compressed_forms``, ``DocumentBody.compressed``): only when it was
    compressed the same way (its meta's ``compression``), and never to changed bytes."""
    same, old, new = b"[1,2,3]" * 4000, b"[4,5]" * 3000, b"[6,7]" * 3000

    async def scenario() -> None:
        client, store = await _snapshots(redis_url)
        try:
            assert await store.compressed_forms(COMPRESSION) == {}  # no snapshot yet
            first = [
                DocumentBody("same", same).compressed(),
                DocumentBody("changes", old).compressed(),
            ]
            await store.publish(first, meta={"compression": COMPRESSION})
            forms = await store.compressed_forms(COMPRESSION)
            assert forms == {d.name: Compressed(content_hash(d.body), d.gzip, d.br) for d in first}
            assert await store.compressed_forms(f"not {COMPRESSION}") == {}
            # Marked forms show which document took them over.
            lent = {name: replace(form, gzip=b"lent", br=b"lent") for name, form in forms.items()}
            kept = DocumentBody("same", same).compressed(lent["same"])
            changed = DocumentBody("changes", new).compressed(lent["changes"])
            assert (kept.gzip, kept.br, kept.reused) == (b"lent", b"lent", True)
            assert changed == DocumentBody("changes", new).compressed()
            assert not changed.reused
            # A snapshot that does not say how it was compressed lends nothing.
            await store.publish(first)
            assert await store.compressed_forms(COMPRESSION) == {}
        finally:
            await client.aclose()

    run(scenario)


async def _snapshots(url: str, grace: int = 60) -> tuple[Redis, SnapshotStore]:
    client = Redis.from_url(url)
    return client, SnapshotStore(client, RedisKeys("t"), grace_seconds=grace)


def test_publish_flips_atomically_and_keeps_the_previous_snapshot_for_the_grace_period(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        client, store = await _snapshots(redis_url, grace=77)
        keys = store.keys
        assert (await store.read("a")).snapshot_id is None
        first = await store.publish([DocumentBody("a", b"A1"), DocumentBody("b", b"B1")])
        second = await store.publish(
            [DocumentBody("a", b"A2", source={"fetched_at": "t2"})], meta={"published_at": "p2"}
        )
        assert int(second) == int(first) + 1
        found = await store.read("a")
        assert found.snapshot_id == second
        assert found.document is not None
        assert found.document.body == b"A2"
        assert found.document.etag == etag_for(b"A2")
        assert found.document.fetched_at == "t2"
        # "b" is not in the current snapshot, even though the previous one had it.
        assert (await store.read("b")) == type(found)(second, None)
        # The current snapshot is permanent; the previous one expires after the grace period.
        assert await client.ttl(keys.document(second, "a")) == -1
        assert 0 < await client.ttl(keys.document(first, "a")) <= 77
        assert 0 < await client.ttl(keys.snapshot_docs(first)) <= 77
        assert 0 < await client.ttl(keys.snapshot_meta(first)) <= 77
        assert await store.meta(second) == {"snapshot_id": second, "published_at": "p2"}
        await client.aclose()

    run(scenario)


def test_a_publish_that_lost_a_document_is_refused_and_the_old_snapshot_stays(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        client, store = await _snapshots(redis_url)
        good = await store.publish([DocumentBody("a", b"good")])
        staged = await store.stage([DocumentBody("a", b"bad"), DocumentBody("c", b"bad")])
        await client.delete(store.keys.document(staged, "c"))  # e.g. evicted, or expired
        with pytest.raises(ResponseError, match="lost document c"):
            await store.activate(staged)
        found = await store.read("a")
        assert found.snapshot_id == good
        assert found.document is not None
        assert found.document.body == b"good"
        await client.aclose()

    run(scenario)


def test_an_abandoned_publish_expires_on_its_own(redis_url: str) -> None:
    async def scenario() -> None:
        client, store = await _snapshots(redis_url)
        keys = store.keys
        abandoned = await store.stage([DocumentBody("a", b"x")])  # never activated
        await store.publish([DocumentBody("a", b"real")])
        for key in (keys.document(abandoned, "a"), keys.snapshot_docs(abandoned)):
            assert 0 < await client.ttl(key) <= PENDING_TTL_SECONDS
        assert (await store.read("a")).document.body == b"real"  # type: ignore[union-attr]
        await client.aclose()

    run(scenario)


def test_readers_never_see_a_mix_of_two_snapshots(redis_url: str) -> None:
    """Publish snapshots whose documents all carry the snapshot's generation while readers
    read pairs of documents; every read's snapshot id must match its body."""

    async def scenario() -> None:
        client, store = await _snapshots(redis_url)
        names = [f"d{i}" for i in range(20)]
        await store.publish([DocumentBody(n, b"0") for n in names])
        mismatches: list[tuple[str, bytes]] = []
        bodies_by_id: dict[str, bytes] = {}
        done = asyncio.Event()

        async def writer() -> None:
            for generation in range(1, 30):
                body = str(generation).encode()
                sid = await store.publish([DocumentBody(n, body) for n in names])
                bodies_by_id[sid] = body
            done.set()

        async def reader() -> int:
            reads = 0
            while not done.is_set():
                for name in names:
                    found = await store.read(name)
                    assert found.document is not None
                    expected = bodies_by_id.get(found.document.snapshot_id)
                    if expected is not None and expected != found.document.body:
                        mismatches.append((found.document.snapshot_id, found.document.body))
                    reads += 1
            return reads

        results = await asyncio.gather(writer(), reader(), reader())
        assert sum(r for r in results if isinstance(r, int)) > 0
        assert mismatches == []
        await client.aclose()

    run(scenario)


def test_migrations_apply_once_and_refuse_edited_ones(empty_database_url: str) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(empty_database_url)
        try:
            assert await schema.current_version(conn) == 0
            with pytest.raises(schema.SchemaBehind, match="stats-fetcher migrate"):
                await schema.check(conn)
            migrated = await schema.migrate(conn)
            assert migrated.applied == [m.version for m in schema.migrations()]
            assert migrated.newer == []
            assert (await schema.migrate(conn)).applied == []
            assert await schema.current_version(conn) == schema.LATEST_VERSION
            assert await schema.check(conn) == []
            await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
            with pytest.raises(schema.MigrationError, match="changed after it was applied"):
                await schema.migrate(conn)
        finally:
            await conn.close()

    run(scenario)


NEWER = schema.LATEST_VERSION + 1


def test_newer_additive_migrations_are_reported_and_breaking_ones_refused(
    empty_database_url: str,
) -> None:
    """A row a newer release adds with only version, name and checksum is additive: migrate
    and the startup check carry on and report it. Marked breaking, both refuse, naming it,
    and migrate applies nothing (not even this release's pending migrations)."""

    async def scenario() -> None:
        conn = await asyncpg.connect(empty_database_url)
        try:
            await schema.migrate(conn)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) "
                "VALUES ($1, 'newer_additive', 'y')",
                NEWER,
            )
            migrated = await schema.migrate(conn)
            assert migrated.applied == []
            assert [(m.version, m.breaks_older) for m in migrated.newer] == [(NEWER, None)]
            assert [m.version for m in await schema.check(conn)] == [NEWER]

            await conn.execute(
                "UPDATE schema_migrations SET breaks_older = 'drops a column' WHERE version = $1",
                NEWER,
            )
            await conn.execute(
                "DELETE FROM schema_migrations WHERE version = $1", schema.LATEST_VERSION
            )  # this release's last migration pending again (its tables stay)
            with pytest.raises(schema.NewerBreakingMigration) as refused:
                await schema.migrate(conn)
            assert refused.value.versions == [NEWER]
            assert f"{NEWER}_newer_additive (drops a column)" in str(refused.value)
            assert await schema.current_version(conn) == NEWER
            applied = await schema.applied_migrations(conn)
            assert schema.LATEST_VERSION not in applied  # nothing was applied
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                schema.LATEST_VERSION,
                schema.migrations()[-1].name,
                schema.migrations()[-1].checksum,
            )
            with pytest.raises(schema.NewerBreakingMigration, match=f"{NEWER}_newer_additive"):
                await schema.check(conn)
        finally:
            await conn.close()

    run(scenario)


def test_a_table_from_before_the_breaking_marker_is_read_and_upgraded(
    empty_database_url: str,
) -> None:
    """schema_migrations as releases before the ``breaks_older`` column created it: the
    startup check reads it (every row additive) and migrate adds the column."""

    async def scenario() -> None:
        conn = await asyncpg.connect(empty_database_url)
        try:
            await schema.migrate(conn)
            await conn.execute("ALTER TABLE schema_migrations DROP COLUMN breaks_older")
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, 'x', 'y')",
                NEWER,
            )
            assert [m.version for m in await schema.check(conn)] == [NEWER]
            assert [m.version for m in (await schema.migrate(conn)).newer] == [NEWER]
            columns = await conn.fetch(
                "SELECT column_name, is_nullable FROM information_schema.columns "
                "WHERE table_name = 'schema_migrations' AND column_name = 'breaks_older'"
            )
            assert [tuple(c) for c in columns] == [("breaks_older", "YES")]
        finally:
            await conn.close()

    run(scenario)


def test_a_migration_marked_breaking_is_recorded_so_and_older_code_refuses_it(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer release's runner (this runner with one migration more, marked by its header
    line) records the mark; this release's runner then refuses the database."""
    shipped = schema.migrations()
    header = "-- Drops what older releases read.\n-- breaking: us_current.record is dropped\n"
    newer = schema.Migration(NEWER, "newer_breaking", header + "CREATE TABLE t_newer (x int);")
    assert newer.breaks_older == "us_current.record is dropped"
    assert shipped[0].breaks_older is None

    async def scenario() -> None:
        conn = await asyncpg.connect(empty_database_url)
        try:
            await schema.migrate(conn)
            monkeypatch.setattr(schema, "migrations", lambda: [*shipped, newer])
            assert (await schema.migrate(conn)).applied == [NEWER]
            recorded = await schema.applied_migrations(conn)
            assert recorded[NEWER].breaks_older == "us_current.record is dropped"
            assert all(recorded[m.version].breaks_older is None for m in shipped)
            monkeypatch.undo()  # this release again
            with pytest.raises(schema.NewerBreakingMigration, match=r"us_current\.record"):
                await schema.migrate(conn)
        finally:
            await conn.close()

    run(scenario)


def test_concurrent_migrators_serialize(empty_database_url: str) -> None:
    async def scenario() -> None:
        conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(schema.migrate(c) for c in conns))
            assert sorted(len(a.applied) for a in applied) == [0, 0, 0, len(schema.migrations())]
        finally:
            for c in conns:
                await c.close()

    run(scenario)
