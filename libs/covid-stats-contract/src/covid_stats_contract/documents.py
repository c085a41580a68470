"""Documents: the exact bytes the api sends, with their metadata.

The fetcher renders every document once; the api sends ``body`` as it is, never decoding
and re-encoding it. A document's ``name`` is its path under the api root without the leading
slash (``v1/us/current.json``).

Records are rendered the way the upstream (the COVID Tracking Project v1 API) rendered them:
compact JSON (no spaces), keys in the upstream's order, non-ASCII left as UTF-8, and a
trailing newline after the top-level value. For the archived files this reproduces the
upstream's bytes exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

JSON_CONTENT_TYPE = "application/json"

US_CURRENT = "v1/us/current.json"
STATES_CURRENT = "v1/states/current.json"
_STATE_CURRENT = "v1/states/{state}/current.json"

STATE_CODE_RE = re.compile(r"^[A-Za-z]{2}$")


def state_current_name(state: str) -> str:
    """Document name of one state's current record; ``state`` is any-case, two letters."""
    if not STATE_CODE_RE.match(state):
        raise ValueError(f"invalid state code {state!r}: expected two letters")
    return _STATE_CURRENT.format(state=state.lower())


def encode_record(record: Mapping[str, Any]) -> str:
    """One record as compact JSON text, keys in the order given."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def render_array(record_texts: Iterable[str]) -> bytes:
    """A JSON array document from already-encoded records."""
    return ("[" + ",".join(record_texts) + "]\n").encode()


def render_object(record_text: str) -> bytes:
    """A JSON object document from one already-encoded record."""
    return (record_text + "\n").encode()


def etag_for(body: bytes) -> str:
    """Strong ETag of a body: the same bytes always give the same tag."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a snapshot as stored in Redis (a hash with these fields)."""

    name: str
    body: bytes
    etag: str
    content_type: str
    snapshot_id: str
    fetched_at: str  # ISO 8601, UTC

    @classmethod
    def render(cls, name: str, body: bytes, *, snapshot_id: str, fetched_at: str) -> Document:
        return cls(
            name=name,
            body=body,
            etag=etag_for(body),
            content_type=JSON_CONTENT_TYPE,
            snapshot_id=snapshot_id,
            fetched_at=fetched_at,
        )

    def to_redis_hash(self) -> dict[str, bytes | str]:
        return {
            "body": self.body,
            "etag": self.etag,
            "content_type": self.content_type,
            "snapshot_id": self.snapshot_id,
            "fetched_at": self.fetched_at,
        }

    @classmethod
    def from_redis_hash(cls, name: str, fields: Mapping[bytes, bytes]) -> Document:
        return cls(
            name=name,
            body=fields[b"body"],
            etag=fields[b"etag"].decode(),
            content_type=fields[b"content_type"].decode(),
            snapshot_id=fields[b"snapshot_id"].decode(),
            fetched_at=fields[b"fetched_at"].decode(),
        )
