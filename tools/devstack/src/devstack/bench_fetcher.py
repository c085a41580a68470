"""``make bench-fetcher``: how fast the stats-fetcher loads the archive, and what an
unchanged upstream costs.

For each dataset (default: every folder of ../shared/covidtracking, else the synthetic one)
on throwaway Redis and PostgreSQL and the replay upstream:

1. a cold refresh into an empty database: per resource the rows, the seconds spent
   validating and in the PostgreSQL transaction (COPY + upsert), the rows/s of that
   transaction; and the seconds to a published snapshot; then every published document's
   size raw, gzip and Brotli, and what compressing them costs;
2. a no-change refresh right after: the upstream requests it made (conditional, answered
   304), the rows it wrote, the PostgreSQL tuples written (from pg_stat_user_tables), and
   whether it published a snapshot.

It reports figures; it asserts nothing. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis as redis_client

from covid_stats_contract import schema
from covid_stats_contract.documents import (
    compress,
    compress_br,
    document_family,
    is_state_series,
)
from covid_stats_contract.keys import RedisKeys
from covid_stats_runtime.logs import configure_logging
from devstack.procs import free_port, pdeathsig_preexec, terminate, wait_until
from devstack.servers import LocalPostgres, LocalRedis

SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "covidtracking"
_WRITES = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
_OTHER_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
    "AND pid <> pg_backend_pid()"
)


async def _fetchval(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _settle(url: str) -> int:
    """Tuples written so far, once every other backend has exited (and so flushed its
    statistics)."""
    wait_until(
        lambda: asyncio.run(_fetchval(url, _OTHER_BACKENDS)) == 0, 30, what="backends to exit"
    )
    return int(asyncio.run(_fetchval(url, _WRITES)))


async def _refresh(env: dict[str, str]) -> tuple[float, Any]:
    """One refresh in this process, as the leader; returns (seconds, RefreshResult)."""
    os.environ.update(env)
    from stats_fetcher.config import Settings
    from stats_fetcher.service import FetcherService

    service = FetcherService(Settings())
    try:
        if not await service.lease.keep():
            raise RuntimeError("the leader lease is held")
        started = time.perf_counter()
        result = await service.refresh()
        seconds = time.perf_counter() - started
        await service.lease.release()
    finally:
        await service.close()
    return seconds, result


def _requests(upstream: str) -> dict[str, int]:
    counts = httpx.get(f"{upstream}/_control/requests").json().values()
    return {
        "requests": sum(c["total"] for c in counts),
        "conditional": sum(c["conditional"] for c in counts),
        "not_modified": sum(c["status"].get("304", 0) for c in counts),
    }


def bench(dataset: str, redis: LocalRedis, postgres: LocalPostgres, log: Path) -> None:
    port = free_port()
    source = ["--synthetic"] if dataset == "synthetic" else ["--dataset", dataset]
    with log.open("ab") as out:
        upstream_proc = subprocess.Popen(
            [sys.executable, "-m", "replay_upstream", "--port", str(port), "--control", *source],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(),
        )
    upstream = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(f"{upstream}/_control/requests"), 60, what="the replay upstream")
        asyncio.run(_reset(postgres.url))
        redis_client.Redis.from_url(redis.url).flushdb()
        env = {
            "REDIS_URL": redis.url,
            "DATABASE_URL": postgres.url,
            "UPSTREAM_BASE_URL": upstream,
            "LOG_LEVEL": "WARNING",
        }
        name = Path(dataset).name
        print(f"\n## {name}\n")
        writes_before = _settle(postgres.url)
        seconds, cold = asyncio.run(_refresh(env))
        writes_cold = _settle(postgres.url) - writes_before
        print("cold refresh (empty database):\n")
        print("| resource | outcome | rows | validate s | store s | rows/s stored |")
        print("|---|---|---:|---:|---:|---:|")
        rows = 0
        for o in cold.outcomes:
            rate = f"{o.records / o.store_seconds:,.0f}" if o.store_seconds else "-"
            print(
                f"| {o.resource} | {o.outcome} | {o.records:,} | {o.validate_seconds:.3f} | "
                f"{o.store_seconds:.3f} | {rate} |"
            )
            rows += o.records
        print(
            f"\n{rows:,} rows; snapshot {cold.snapshot_id} published {seconds:.2f} s after the "
            f"refresh began ({rows / seconds:,.0f} rows/s end to end); "
            f"{writes_cold:,} PostgreSQL tuples written; {_requests(upstream)}\n"
        )
        _sizes(redis.url, cold.snapshot_id)
        httpx.delete(f"{upstream}/_control/requests")
        seconds, again = asyncio.run(_refresh(env))
        writes_again = _settle(postgres.url) - writes_before - writes_cold
        print(
            f"no-change refresh: {seconds:.3f} s; {_requests(upstream)}; outcomes "
            f"{sorted({o.outcome for o in again.outcomes})}; rows written "
            f"{sum(o.written + o.deleted for o in again.outcomes)}; PostgreSQL tuples written "
            f"{writes_again}; new snapshot: {again.snapshot_id or 'none'}"
        )
    finally:
        terminate(upstream_proc)


def _sizes(url: str, snapshot_id: str) -> None:
    """Every published document's size as it is served: raw, gzip and Brotli (the bodies the
    fetcher compressed, read back from the snapshot), a state's documents summed per kind; and
    what compressing them all costs (compressed again here, one core)."""
    client = redis_client.Redis.from_url(url)
    keys = RedisKeys()
    names = sorted(n.decode() for n in client.smembers(keys.snapshot_docs(snapshot_id)))  # type: ignore[union-attr]
    rows: dict[str, list[int]] = {}  # document (a state's: v1/states/{state}/...) -> sizes
    bodies: list[tuple[str, bytes]] = []
    for name in names:
        fields = client.hmget(keys.document(snapshot_id, name), "body", "gzip", "br")
        body, gz, br = (value if isinstance(value, bytes) else b"" for value in fields)
        row = rows.setdefault(document_family(name), [0, 0, 0, 0])
        row[0] += 1
        for i, data in enumerate((body, gz or body, br or body), start=1):
            row[i] += len(data)
        bodies.append((name, body))
    print("documents as served (a compressed form absent when too small to gain: its raw size):\n")
    print("| document | count | raw bytes | gzip | br | br/gzip |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, (count, raw, gz_size, br_size) in rows.items():
        print(
            f"| {kind} | {count} | {raw:,} | {gz_size:,} | {br_size:,} | {br_size / gz_size:.2f} |"
        )
    totals = [sum(row[i] for row in rows.values()) for i in range(4)]
    print(
        f"| all | {totals[0]} | {totals[1]:,} | {totals[2]:,} | {totals[3]:,} | "
        f"{totals[3] / totals[2]:.2f} |"
    )
    started = time.perf_counter()
    for _, body in bodies:
        compress(body)
    gzip_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for name, body in bodies:
        compress_br(body, best=not is_state_series(name))
    br_seconds = time.perf_counter() - started
    print(
        f"\ncompressing every document once: gzip {gzip_seconds:.2f} s, Brotli "
        f"{br_seconds:.2f} s (one core)\n"
    )


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await schema.migrate(conn)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-fetcher", description=__doc__.split("\n")[0])
    parser.add_argument(
        "datasets",
        nargs="*",
        help="dataset folders (default: every folder of ../shared/covidtracking, else synthetic)",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    datasets = args.datasets or (
        [str(p) for p in sorted(SHARED.glob("ctp_*")) if p.is_dir()] or ["synthetic"]
    )
    print(f"# stats-fetcher benchmark ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="covid-stats-bench-", ignore_cleanup_errors=True) as d:
        state = Path(d)
        with LocalRedis(state) as redis, LocalPostgres(state) as postgres:
            for dataset in datasets:
                bench(dataset, redis, postgres, state / "upstream.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
