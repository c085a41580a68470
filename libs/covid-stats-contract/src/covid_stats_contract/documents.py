"""Documents: the exact bytes the api sends, with their metadata.

The fetcher renders every document once; the api sends ``body`` as it is, never decoding
and re-encoding it. A document's ``name`` is its path under the api root without the leading
slash (``v1/us/current.json``).

Records are rendered the way the upstream (the COVID Tracking Project v1 API) rendered them.
JSON: compact (no spaces), keys in the upstream's order, non-ASCII left as UTF-8, a newline
after the top-level value. CSV: a header of the keys in that order, ``\\n`` line ends, null as
an empty cell, booleans as ``true``/``false``, minimal quoting. For the archived files both
reproduce the upstream's bytes exactly.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import brotli  # type: ignore[import-untyped]  # no stubs published

from covid_stats_contract.resources import FORMATS, RESOURCES, Format, state_code_pattern
from covid_stats_contract.resources import STATES_CURRENT as _STATES_CURRENT
from covid_stats_contract.resources import STATES_DAILY as _STATES_DAILY

JSON_CONTENT_TYPE = "application/json"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
CONTENT_TYPES: dict[Format, str] = {"json": JSON_CONTENT_TYPE, "csv": CSV_CONTENT_TYPE}

US_CURRENT = "v1/us/current.json"
STATES_CURRENT = "v1/states/current.json"
STATUS = "v1/status.json"

STATE_CODE_RE = re.compile(f"^{state_code_pattern()}$")

# Where a state's code goes in a per-state document's name (``document_families``).
STATE_PLACEHOLDER = "{state}"


# A state's daily series, by family name (``compressed`` gives them the fast quality).
_STATE_SERIES = frozenset(_STATES_DAILY.state_document(STATE_PLACEHOLDER, fmt) for fmt in FORMATS)


def document_families() -> tuple[str, ...]:
    """The name of every document the fetcher publishes, a state's documents once with
    ``STATE_PLACEHOLDER`` where the (lower-case) code goes: each resource's list in every
    format, its per-state documents, and the status. The api serves each at ``/`` + name."""
    names: list[str] = []
    for resource in RESOURCES:
        for fmt in FORMATS:
            names.append(resource.document(fmt))
            if resource.per_state is not None:
                names.append(resource.state_document(STATE_PLACEHOLDER, fmt))
    names.append(STATUS)
    return tuple(names)


_FAMILIES = frozenset(document_families())


def check_state_code(state: str) -> str:
    """The code in upper case; ValueError unless it is two letters."""
    if not STATE_CODE_RE.match(state):
        raise ValueError(f"invalid state code {state!r}: expected two letters")
    return state.upper()


def state_current_name(state: str) -> str:
    """Document name of one state's current record; ``state`` is any-case, two letters."""
    return _STATES_CURRENT.state_document(check_state_code(state))


def encode_record(record: Mapping[str, Any]) -> str:
    """One record as compact JSON text, keys in the order given."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def render_array(record_texts: Iterable[str]) -> bytes:
    """A JSON array document from already-encoded records."""
    return ("[" + ",".join(record_texts) + "]\n").encode()


def render_object(record_text: str) -> bytes:
    """A JSON object document from one already-encoded record."""
    return (record_text + "\n").encode()


def render_csv(records: Sequence[Mapping[str, Any]]) -> bytes:
    """A CSV document: the header is every key in first-seen order."""
    header: dict[str, None] = {}
    for record in records:
        header.update(dict.fromkeys(record))
    return render_csv_rows(list(header), records)


def render_csv_rows(header: Sequence[str], records: Iterable[Mapping[str, Any]]) -> bytes:
    """A CSV document of ``header``'s columns: one row per record, written as it comes (the
    records may be an iterator, parsed one at a time)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    # null -> empty cell, booleans -> true/false (inline: this loop runs per cell)
    writer.writerows(
        [
            "" if v is None else ("true" if v else "false") if v is True or v is False else v
            for v in map(record.get, header)
        ]
        for record in records
    )
    return out.getvalue().encode()


# Bodies smaller than this are not worth compressing (the gzip header alone is 20 bytes).
GZIP_MIN_BYTES = 256
GZIP_LEVEL = 6


def compress(body: bytes) -> bytes:
    """The gzip form of a body, rendered once by the fetcher: deterministic (no timestamp),
    so every replica produces the same bytes. Empty for bodies too small to gain."""
    if len(body) < GZIP_MIN_BYTES:
        return b""
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


# Brotli's quality, measured on the archive's documents (2 cores, one snapshot: 347
# documents, 32.8 MB). Quality 11 makes a 75 KB states/current.json 19 % smaller than quality
# 5 (6.4 vs 7.9 KB; gzip: 8.8 KB) in about 60 ms, but it costs about 1 s per MB: the 13.6 MB
# states/daily.json takes 31 s (quality 10: 13 s) against 0.3 s at quality 5 (1.00 MB; gzip
# 1.32 MB), and the 56 per-state daily CSVs (36 to 55 KB each) 2.7 s against 0.07 s for 18 %
# less (640 vs 785 KB). So: the best quality for the lists and a state's current and info
# documents up to BROTLI_BEST_MAX_BYTES (the hot ones, about 0.6 s per snapshot), a
# gzip-priced one for everything larger and for every state's daily series.
BROTLI_BEST_MAX_BYTES = 128 * 1024
BROTLI_BEST_QUALITY = 11
BROTLI_FAST_QUALITY = 5


def compress_br(body: bytes, best: bool = True) -> bytes:
    """The Brotli form of a body, rendered once by the fetcher (deterministic: the same
    bytes and quality always give the same output). Empty for bodies too small to gain.
    ``best``: quality 11 when the body is at most ``BROTLI_BEST_MAX_BYTES``, else 5."""
    if len(body) < GZIP_MIN_BYTES:
        return b""
    best = best and len(body) <= BROTLI_BEST_MAX_BYTES
    compressed: bytes = brotli.compress(
        body, quality=BROTLI_BEST_QUALITY if best else BROTLI_FAST_QUALITY
    )
    return compressed


# What the compressed forms above depend on: a snapshot records it (its meta's
# ``compression``), and a publish takes over the forms of the snapshot before it only when
# that snapshot was compressed the same way (``Compressed``).
COMPRESSION = (
    f"gzip:{GZIP_LEVEL};br:{BROTLI_BEST_QUALITY}<={BROTLI_BEST_MAX_BYTES},{BROTLI_FAST_QUALITY};"
    f"min:{GZIP_MIN_BYTES}"
)


@dataclass(frozen=True, slots=True)
class Compressed:
    """A published document's compressed forms, and the hash of the bytes they compress:
    what the next publish takes over for a document whose bytes did not change, instead of
    compressing them again (gzip and Brotli of every document are most of a publish's CPU)."""

    content_hash: str
    gzip: bytes
    br: bytes


def document_family(name: str) -> str:
    """The name ``document_families`` lists a document under: a state's with
    ``STATE_PLACEHOLDER`` for its code (``v1/states/ca/daily.csv`` ->
    ``v1/states/{state}/daily.csv``), any other as it is."""
    parts = name.split("/")
    if len(parts) == 4:
        family = "/".join([*parts[:2], STATE_PLACEHOLDER, parts[3]])
        if family in _FAMILIES:
            return family
    return name


def is_state_series(name: str) -> bool:
    """Whether a document is one state's daily series (many, large, read less often)."""
    return document_family(name) in _STATE_SERIES


def content_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def etag_for(body: bytes) -> str:
    """Strong ETag of a body: the same bytes always give the same tag."""
    return '"' + content_hash(body)[:32] + '"'


@dataclass(frozen=True, slots=True)
class DocumentBody:
    """A document as the fetcher renders it, before it belongs to a snapshot. ``source``
    holds the freshness of the upstream response it came from (``fetched_at``,
    ``upstream_etag``, ``upstream_last_modified``; empty strings when unknown)."""

    name: str
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    source: Mapping[str, str] = field(default_factory=dict)
    gzip: bytes = b""  # compress(body), or empty
    br: bytes = b""  # compress_br(body), or empty
    reused: bool = False  # gzip and br taken over from the snapshot before (``compressed``)

    def compressed(self, previous: Compressed | None = None) -> DocumentBody:
        """This document with its gzip and Brotli forms: ``previous``'s when they compress
        the same bytes (the compression is deterministic: they are what compressing gives),
        else compressed here."""
        if previous is not None and previous.content_hash == content_hash(self.body):
            gzip, br, reused = previous.gzip, previous.br, True
        else:
            gzip = compress(self.body)
            br = compress_br(self.body, best=not is_state_series(self.name))
            reused = False
        return DocumentBody(self.name, self.body, self.content_type, self.source, gzip, br, reused)


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a snapshot as stored in Redis (a hash with these fields)."""

    name: str
    body: bytes
    etag: str
    content_type: str
    content_hash: str
    snapshot_id: str
    fetched_at: str  # ISO 8601 UTC: when the upstream response it renders was fetched
    upstream_etag: str = ""
    upstream_last_modified: str = ""
    gzip: bytes = b""  # the body gzip-compressed once by the fetcher; empty when not worth it
    br: bytes = b""  # the same with Brotli

    @classmethod
    def render(cls, doc: DocumentBody, snapshot_id: str) -> Document:
        return cls(
            name=doc.name,
            body=doc.body,
            etag=etag_for(doc.body),
            content_type=doc.content_type,
            content_hash=content_hash(doc.body),
            snapshot_id=snapshot_id,
            fetched_at=doc.source.get("fetched_at", ""),
            upstream_etag=doc.source.get("upstream_etag", ""),
            upstream_last_modified=doc.source.get("upstream_last_modified", ""),
            gzip=doc.gzip,
            br=doc.br,
        )

    def to_redis_hash(self) -> dict[str, bytes | str]:
        return {
            "body": self.body,
            "etag": self.etag,
            "content_type": self.content_type,
            "content_hash": self.content_hash,
            "snapshot_id": self.snapshot_id,
            "fetched_at": self.fetched_at,
            "upstream_etag": self.upstream_etag,
            "upstream_last_modified": self.upstream_last_modified,
            "gzip": self.gzip,
            "br": self.br,
        }

    @classmethod
    def from_redis_hash(cls, name: str, fields: Mapping[bytes, bytes]) -> Document:
        def text(key: bytes) -> str:
            return fields.get(key, b"").decode()

        return cls(
            name=name,
            body=fields[b"body"],
            etag=text(b"etag"),
            content_type=text(b"content_type"),
            content_hash=text(b"content_hash"),
            snapshot_id=text(b"snapshot_id"),
            fetched_at=text(b"fetched_at"),
            upstream_etag=text(b"upstream_etag"),
            upstream_last_modified=text(b"upstream_last_modified"),
            gzip=fields.get(b"gzip", b""),
            br=fields.get(b"br", b""),
        )
