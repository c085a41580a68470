"""The changes feed (``GET /v1/changes.json``): the logged publishes
(``covid_stats_contract.publishes``) after an instant, a page at a time, from PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from covid_stats_api.core.stores import Stores
from covid_stats_contract.documents import compress, compress_br, etag_for
from covid_stats_contract.publishes import Publish, publishes_after
from covid_stats_runtime.stores import DATABASE_ERRORS

CHANGES_PATH = "/v1/changes.json"


class FeedUnavailable(Exception):
    """PostgreSQL cannot answer."""


@dataclass(frozen=True, slots=True)
class FeedPage:
    body: bytes
    gzip: bytes
    br: bytes
    etag: str
    next: str | None  # the next page's path and query; None on the last page


def iso(at: datetime) -> str:
    """An instant as the feed writes it: UTC, microseconds, ``Z``."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _entry(publish: Publish) -> dict[str, object]:
    return {
        "publish_id": publish.id,
        "published_at": iso(publish.published_at),
        "snapshot_id": publish.snapshot_id,
        "resources": list(publish.changes.resources),
        "states": list(publish.changes.states),
    }


class ChangesFeed:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    async def page(self, since: datetime, cursor: int, limit: int) -> FeedPage:
        pool = self.stores.pg_pool
        if pool is None:
            raise FeedUnavailable
        try:
            async with pool.acquire() as conn:
                found = await publishes_after(conn, since, cursor, limit + 1)
        except DATABASE_ERRORS as exc:
            raise FeedUnavailable from exc
        more = len(found) > limit
        found = found[:limit]
        link = None
        if more:
            query = {"since": iso(since), "cursor": str(found[-1].id), "limit": str(limit)}
            link = f"{CHANGES_PATH}?{urlencode(query)}"
        document = {"since": iso(since), "changes": [_entry(p) for p in found], "next": link}
        body = (json.dumps(document, separators=(",", ":")) + "\n").encode()
        return FeedPage(body, compress(body), compress_br(body), etag_for(body), link)
