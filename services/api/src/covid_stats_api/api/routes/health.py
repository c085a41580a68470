"""Probes. ``/healthz``: the process is alive (no dependency is checked, so it never flaps
when Redis or PostgreSQL do). ``/readyz``: the worker can serve data, from the current Redis
snapshot or from PostgreSQL; 503 when neither can."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError

from covid_stats_api.api.deps import ApiDep
from covid_stats_api.core.stores import DATABASE_ERRORS
from covid_stats_contract import records

router = APIRouter(tags=["probes"])

Check = Literal["ok", "no_data", "down"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    redis: Check
    postgres: Check


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: data can be served from Redis or PostgreSQL",
    responses={503: {"model": Readiness, "description": "Neither store can serve data"}},
)
async def readyz(api: ApiDep) -> JSONResponse:
    stores = api.stores
    redis: Check
    try:
        redis = "ok" if await stores.snapshots.current_id() is not None else "no_data"
    except RedisError:
        redis = "down"
    postgres: Check = "down"
    if stores.pg_pool is not None:
        try:
            async with stores.pg_pool.acquire() as conn:
                postgres = "ok" if await records.has_states(conn) else "no_data"
        except DATABASE_ERRORS:
            postgres = "down"
    ready = "ok" in (redis, postgres)
    body = Readiness(status="ready" if ready else "unavailable", redis=redis, postgres=postgres)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
