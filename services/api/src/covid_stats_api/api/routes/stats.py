"""Data endpoints. Bodies are the fetcher's pre-rendered bytes, sent as they are.

``/v1/...`` paths answer in the upstream's (COVID Tracking Project v1) shape.
``/covid-stats`` keeps the original example's contract: ``{"source": ..., "data": <US
current>}`` where ``data`` is the ``/v1/us/current.json`` array and ``source`` is ``cache``
when the body came from Redis and ``database`` when it came from PostgreSQL.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response

from covid_stats_api.api.deps import ReaderDep, SettingsDep
from covid_stats_api.api.errors import ERROR_RESPONSES, ApiError, no_data
from covid_stats_api.documents import DocumentReader, Served
from covid_stats_contract.documents import (
    JSON_CONTENT_TYPE,
    STATES_CURRENT,
    US_CURRENT,
    state_current_name,
)

router = APIRouter(tags=["statistics"])

_ARRAY: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
_OBJECT: dict[str, Any] = {"type": "object"}


def _json_responses(schema: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "content": {JSON_CONTENT_TYPE: {"schema": schema}}},
        **ERROR_RESPONSES,
    }


def _send(served: Served) -> Response:
    return Response(
        content=served.body,
        media_type=JSON_CONTENT_TYPE,
        headers={"ETag": served.etag, "X-Data-Source": served.source},
    )


async def _require(reader: DocumentReader, name: str, retry_after: int) -> Served:
    served = await reader.read(name)
    if served is None:
        raise no_data(retry_after)
    return served


@router.get(
    "/covid-stats",
    response_class=Response,
    summary="US current totals in the original example's envelope",
    responses=_json_responses(
        {
            "type": "object",
            "properties": {
                "source": {"type": "string", "enum": ["cache", "database"]},
                "data": _ARRAY,
            },
            "required": ["source", "data"],
        },
        "`data` is the /v1/us/current.json array; `source` is `cache` (Redis) or "
        "`database` (PostgreSQL)",
    ),
)
async def covid_stats(reader: ReaderDep, settings: SettingsDep) -> Response:
    served = await _require(reader, US_CURRENT, settings.retry_after_seconds)
    body = b'{"source":"%s","data":%s}\n' % (served.source.encode(), served.body.rstrip(b"\n"))
    return _send(Served(body, served.etag[:-1] + f'-{served.source}"', served.source))


@router.get(
    "/v1/us/current.json",
    response_class=Response,
    summary="US current totals (upstream shape: an array of one record)",
    responses=_json_responses(_ARRAY, "The upstream's /v1/us/current.json"),
)
async def us_current(reader: ReaderDep, settings: SettingsDep) -> Response:
    return _send(await _require(reader, US_CURRENT, settings.retry_after_seconds))


@router.get(
    "/v1/states/current.json",
    response_class=Response,
    summary="Current values of every state (upstream shape: an array, states A..Z)",
    responses=_json_responses(_ARRAY, "The upstream's /v1/states/current.json"),
)
async def states_current(reader: ReaderDep, settings: SettingsDep) -> Response:
    return _send(await _require(reader, STATES_CURRENT, settings.retry_after_seconds))


StateCode = Annotated[
    str,
    Path(
        pattern="^[A-Za-z]{2}$",
        description="Two-letter state or territory code, any case",
        examples=["ca"],
    ),
]


@router.get(
    "/v1/states/{state}/current.json",
    response_class=Response,
    summary="Current values of one state (upstream shape: an object)",
    responses=_json_responses(_OBJECT, "The state's record from /v1/states/current.json"),
)
async def state_current(state: StateCode, reader: ReaderDep, settings: SettingsDep) -> Response:
    served = await reader.read(state_current_name(state))
    if served is not None:
        return _send(served)
    if await reader.has_state_data():
        raise ApiError(
            404, "unknown_state", f"No data for state {state.upper()!r}", parameter="state"
        )
    raise no_data(settings.retry_after_seconds)
