"""The whole real archive through the pipeline: each folder of ../shared/covidtracking,
served by the replay upstream, refreshed into PostgreSQL and Redis. Record counts equal
the upstream's; a sample of records (every 50th, and the first and last) is equal field by
field, in the same key order; the published documents are the upstream's bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from conftest import archive_only
from covid_stats_contract.resources import RESOURCES, Format, Resource
from devstack.procs import free_port
from support import ARCHIVE, Upstream, clean_env, python_module, run_fetcher, spawn
from test_fetcher import body

FOLDERS = {
    "ctp_v1_api_snapshot_20200902": {"states/daily": 10178, "states/info": 56},
    "ctp_v1_csv_20210306": {"states/daily": 15577, "states/info": 56},
    "ctp_website_final_20210307": {"states/daily": 20780},
}

pytestmark = archive_only


@pytest.fixture(scope="module", params=sorted(FOLDERS))
def folder_upstream(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Upstream]]:
    folder = str(request.param)
    port = free_port()
    process = spawn(
        f"upstream-{folder}",
        python_module(
            "replay_upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dataset",
            str(ARCHIVE.parent / folder),
        ),
        clean_env(),
        tmp_path_factory.mktemp("upstream"),
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/v1/states/daily.json")
    yield folder, Upstream(url, True)
    process.stop()


def _stored(database_url: str, resource: Resource) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                f"SELECT record::text FROM {resource.table} ORDER BY {resource.order_by}"  # noqa: S608
            )
        finally:
            await conn.close()
        return [json.loads(row[0]) for row in rows]

    return asyncio.run(run())


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_every_folder_goes_through_the_pipeline(
    folder_upstream: tuple[str, Upstream],
    fmt: Format,
    redis_url: str,
    database_url: str,
) -> None:
    folder, upstream = folder_upstream
    env = clean_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        UPSTREAM_BASE_URL=upstream.url,
        UPSTREAM_FORMAT=fmt,
        UPSTREAM_RETRIES="0",
    )
    result = run_fetcher("refresh-once", env, timeout=300)
    assert result.returncode == 0, result.stdout.decode()[-3000:]

    served = [r for r in RESOURCES if upstream.get(r.upstream_path(fmt)).status_code == 200]
    assert {r.key for r in served} >= set(FOLDERS[folder])
    for resource in served:
        expected = json.loads(upstream.get(resource.upstream_path("json")).content)
        stored = _stored(database_url, resource)
        assert len(stored) == len(expected), resource.key
        if resource.key in FOLDERS[folder]:
            assert len(stored) == FOLDERS[folder][resource.key]
        sample = sorted({0, len(expected) - 1, *range(0, len(expected), 50)})
        for index in sample:
            assert list(stored[index].items()) == list(expected[index].items()), (
                resource.key,
                index,
            )
        published = body(redis_url, resource.document("json"))
        assert published == upstream.get(resource.upstream_path("json")).content, resource.key
    for resource in set(RESOURCES) - set(served):  # each resource fails on its own
        assert _stored(database_url, resource) == []
