"""Surrogate keys: what an edge cache (Varnish's xkey, Fastly, Cloudflare's cache tags) files
each answer under, and which of them a publish purges. The one definition: the api sends
them (``Surrogate-Key``), the fetcher purges them (``xkey-purge``), tests derive from them.

- A **document** is filed under its name (``v1/states/ca/daily.json``), and a state's
  document also under its state (``state:CA``). A list (``v1/states/daily.json``) is filed
  under its name only: whenever a state it holds changes, the list's own bytes change, so
  the publish names it among its changed documents (its name is purged), and 56 state keys
  on every list answer would purge nothing more.
- A **query answer** is filed under the documents it is drawn from: the resource's list in
  the answer's format, or, when the question names states (``?states=ca,ny``, a state's
  path), each of those states' documents (and so each state): a change to Texas purges
  ``?states=ca,ny`` of no key. A derived series or a revisions list is drawn from its daily
  document; ``/covid-stats`` from ``v1/us/current.json``.
- The **changes feed** (``v1/changes.json``) gains an entry at every publish that changed
  something, so every purge names it.
- An answer **as of** a past instant never changes (the versions it reads are settled):
  it is filed under ``AS_OF`` only, which no publish purges (the edge keeps it its
  ``Surrogate-Control`` max-age; an operator may purge them all by that key).

A publish purges ``purge_keys(changes)``: the changed documents' names, the changed states'
keys and the feed's; ``purge_batches`` splits them into header values of a bounded size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from covid_stats_contract.changes import Changes
from covid_stats_contract.documents import STATE_CODE_RE, STATUS
from covid_stats_contract.records import document_of
from covid_stats_contract.resources import Format, Resource

# The headers of the shared contract (the VCL reads them; the fetcher sends the last).
SURROGATE_KEY_HEADER = "Surrogate-Key"
SURROGATE_CONTROL_HEADER = "Surrogate-Control"
PURGE_KEYS_HEADER = "xkey-purge"
PURGE_METHOD = "PURGE"

STATE_PREFIX = "state:"
CHANGES_KEY = "v1/changes.json"  # the changes feed: it changes at every publish that purges
AS_OF = "as-of"  # answers as of a past instant: never purged by a publish

# Keys per PURGE request at most this many bytes (with their separators): Varnish refuses
# a request header line over http_req_hdr_len (8 KiB by default) with the request's
# other headers beside it; a full publish's keys (every document) are about 10 KiB.
PURGE_HEADER_MAX_BYTES = 4096


def state_key(state: str) -> str:
    """The key of every answer holding one state's records (``CA`` or ``ca``)."""
    if not STATE_CODE_RE.fullmatch(state):
        raise ValueError(f"invalid state code {state!r}: expected two letters")
    return STATE_PREFIX + state.upper()


@functools.lru_cache(maxsize=4096)  # names are few (a snapshot's documents)
def document_keys(name: str) -> tuple[str, ...]:
    """The keys of a published document's answers (``/`` + name): its name, and its state's
    key for a state's document. ValueError for a name that is no published document."""
    if name in (CHANGES_KEY, STATUS):
        return (name,)
    _, _, state = document_of(name)
    return (name,) if state is None else (name, state_key(state))


def query_keys(resource: Resource, fmt: Format, states: Iterable[str] = ()) -> tuple[str, ...]:
    """The keys of an answer to a question on ``resource`` in ``fmt`` (not as of an
    instant): those of the states' own documents when it names states, else the list's."""
    codes = sorted({state.upper() for state in states})
    if not codes or resource.per_state is None:
        return document_keys(resource.document(fmt))
    return tuple(key for code in codes for key in document_keys(resource.state_document(code, fmt)))


def purge_keys(changes: Changes) -> tuple[str, ...]:
    """Every key a publish that changed ``changes`` must purge (none when it changed
    nothing): the changed documents' names, the changed states' keys, the changes feed."""
    if not changes:
        return ()
    return (*changes.documents, *(state_key(state) for state in changes.states), CHANGES_KEY)


def purge_batches(keys: Iterable[str], max_bytes: int = PURGE_HEADER_MAX_BYTES) -> list[str]:
    """``keys`` as space-separated header values of at most ``max_bytes`` each (a key longer
    than that alone in its value), in order, each key once."""
    batches: list[str] = []
    current: list[str] = []
    size = 0
    for key in dict.fromkeys(keys):
        extra = len(key.encode()) + (1 if current else 0)
        if current and size + extra > max_bytes:
            batches.append(" ".join(current))
            current, size = [], 0
            extra = len(key.encode())
        current.append(key)
        size += extra
    if current:
        batches.append(" ".join(current))
    return batches
