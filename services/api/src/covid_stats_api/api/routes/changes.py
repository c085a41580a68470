"""``GET /v1/changes.json``: the publishes that changed data after an instant (the changes
feed), oldest first, a page at a time; ETag and conditional requests like the documents."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from covid_stats_api.api import params
from covid_stats_api.api.deps import ApiDep
from covid_stats_api.api.errors import ERROR_RESPONSES
from covid_stats_api.api.responses import get_and_head
from covid_stats_api.reads.changes import FeedUnavailable
from covid_stats_contract.documents import JSON_CONTENT_TYPE
from covid_stats_contract.edge import CHANGES_KEY, document_keys
from covid_stats_runtime.http import (
    DATA_SOURCE_HEADER,
    Representation,
    RepresentationResponse,
    data_headers,
)

router = APIRouter(prefix="/v1", tags=["changes"])

MAX_LIMIT = 500
CHANGES_NOT_AS_OF = "the feed is a history already: `since` selects from it"


class Change(BaseModel):
    """One publish that changed data."""

    publish_id: int
    published_at: str
    snapshot_id: str
    resources: list[str]
    states: list[str]


class ChangesPage(BaseModel):
    """A page of the changes feed; ``next`` is the next page's path (null on the last)."""

    since: str
    changes: list[Change]
    next: str | None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON Schema with its nested models written in place (no ``$ref``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if "$ref" in value:
                return walk(defs[value["$ref"].rsplit("/", 1)[1]])
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    result: dict[str, Any] = walk(schema)
    return result


@get_and_head(
    router,
    "/changes.json",
    summary="The publishes that changed data after `since`: when, which snapshot, which"
    " resources and states",
    responses={
        200: {
            "description": 'Oldest first; `next` (and a `Link: rel="next"` header) names the'
            " next page while there is one",
            "content": {JSON_CONTENT_TYPE: {"schema": inline_schema(ChangesPage)}},
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                "Link": {"schema": {"type": "string"}},
                DATA_SOURCE_HEADER: {"schema": {"type": "string", "enum": ["database"]}},
            },
        },
        304: {"description": "Not modified: the `If-None-Match` tag is current"},
        **ERROR_RESPONSES,
    },
)
async def changes(
    api: ApiDep,
    since: Annotated[
        str,
        Query(
            description="An ISO 8601 instant with its offset: publishes after it",
            examples=["2026-12-04T23:00:00Z"],
            max_length=40,
        ),
    ],
    cursor: Annotated[
        str | None,
        Query(
            description="The `next` link's cursor (opaque): the page after the one that gave it",
            pattern=r"^[0-9]{1,18}$",
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Publishes per page at most")
    ] = 100,
    as_of: Annotated[str | None, params.not_as_of(CHANGES_NOT_AS_OF)] = None,
) -> Response:
    params.refuse_as_of(as_of, CHANGES_NOT_AS_OF)
    instant = params.parse_instant(since, "since")
    try:
        page = await api.changes.page(instant, int(cursor or 0), limit)
    except FeedUnavailable:
        raise api.no_data() from None
    common = data_headers(api.settings.cache_policy, "database", document_keys(CHANGES_KEY))
    if page.next is not None:
        common.append((b"link", f'<{page.next}>; rel="next"'.encode()))
    return RepresentationResponse(
        Representation.build(page.body, page.gzip, page.br, page.etag, JSON_CONTENT_TYPE, common)
    )
