"""Probes.

``/healthz`` (liveness): the process answers. It checks no dependency, so it never flaps when
Redis or PostgreSQL do: restarting the pod would not bring them back, and would throw away
the documents the workers hold in memory.

``/readyz`` (readiness): what this worker can still serve. Ready while any one of these can
answer: the current Redis snapshot, PostgreSQL (with data), or the worker's in-process tier
holding documents of a snapshot (hot documents keep being served with both stores down).
503 only when none can. The body reports each one.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from covid_stats_api.api.deps import Api, ApiDep
from covid_stats_contract import records
from covid_stats_runtime.stores import DATABASE_ERRORS

router = APIRouter(tags=["probes"])

Check = Literal["ok", "no_data", "down"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    redis: Check = Field(
        description="`ok`: a current snapshot; `no_data`: Redis answers but holds none; "
        "`down`: Redis does not answer"
    )
    postgres: Check = Field(
        description="`ok`: PostgreSQL answers and holds data; `no_data`: it holds none; "
        "`down`: it does not answer"
    )
    memory: Literal["ok", "empty"] = Field(
        description="`ok`: this worker holds documents of a snapshot in memory (served even "
        "with both stores down); `empty`: none yet"
    )


async def _redis(api: Api) -> Check:
    try:
        return "ok" if await api.stores.snapshots.current_id() is not None else "no_data"
    except (RedisError, OSError):
        return "down"


async def _postgres(api: Api) -> Check:
    pool = api.stores.pg_pool
    if pool is None:
        return "down"
    try:
        async with pool.acquire() as conn:
            return "ok" if await records.has_states(conn) else "no_data"
    except DATABASE_ERRORS:
        return "down"


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: Redis, PostgreSQL or this worker's memory can serve data",
    responses={503: {"model": Readiness, "description": "Nothing can serve data"}},
)
async def readyz(api: ApiDep) -> JSONResponse:
    redis, postgres = await asyncio.gather(_redis(api), _postgres(api))
    memory: Literal["ok", "empty"] = "ok" if api.reader.hot.snapshot_documents() else "empty"
    ready = "ok" in (redis, postgres, memory)
    body = Readiness(
        status="ready" if ready else "unavailable", redis=redis, postgres=postgres, memory=memory
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
