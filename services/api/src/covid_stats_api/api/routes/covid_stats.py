"""``/covid-stats``: the original example's contract, ``{"source": ..., "data": ...}``.

``data`` is the ``/v1/us/current.json`` array; ``source`` is ``cache`` when the body came from
Redis and ``database`` when it came from PostgreSQL. The envelope is assembled from the
document's bytes, never by decoding and re-encoding them.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from covid_stats_api.api.deps import ApiDep
from covid_stats_api.api.errors import ERROR_RESPONSES
from covid_stats_api.api.responses import SchemaRef, get_and_head
from covid_stats_api.reads.documents import Served
from covid_stats_api.reads.hot import envelope_bodies, envelope_etag
from covid_stats_contract.documents import JSON_CONTENT_TYPE, US_CURRENT
from covid_stats_contract.edge import document_keys
from covid_stats_contract.models import UsRecord

router = APIRouter(tags=["covid-stats"])


@get_and_head(
    router,
    "/covid-stats",
    summary="US current totals in the original example's envelope",
    responses={
        200: {
            "description": "`data` is the /v1/us/current.json array; `source` is `cache` "
            "(Redis) or `database` (PostgreSQL)",
            "content": {
                JSON_CONTENT_TYPE: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "source": {"type": "string", "enum": ["cache", "database"]},
                            "data": {
                                "type": "array",
                                "items": SchemaRef(UsRecord),
                            },
                        },
                        "required": ["source", "data"],
                    }
                }
            },
        },
        304: {"description": "Not modified"},
        **ERROR_RESPONSES,
    },
)
async def covid_stats(api: ApiDep) -> Response:
    served = await api.reader.read(US_CURRENT)
    if served is None:
        raise api.no_data()
    # The hot tier's bodies (compressed once per worker): both paths answer alike.
    body, gzip, br = envelope_bodies(served.source, served.body)
    tag = envelope_etag(served.source, served.etag)
    served = Served(body, tag, served.source, JSON_CONTENT_TYPE, gzip, br)
    return api.send(served, document_keys(US_CURRENT))
