"""What a publish changed: the one place that decides it.

A publish changed exactly the documents whose bytes differ from the last logged publish's
(added, changed or gone), by their digests (``documents.content_hash``). The changed
document names say which resources and which states changed: a state's document names its
state (``v1/states/mi/daily.json`` -> ``MI``, upper case as the upstream writes codes); a
list names its resource only. The fetcher computes this once per publish; the result is
logged in ``publishes`` (``GET /v1/changes.json``), sent to the webhooks, and is the list an
edge cache must purge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from covid_stats_contract.documents import STATUS
from covid_stats_contract.records import document_of
from covid_stats_contract.resources import RESOURCES

# The "resource" of ``v1/status.json`` (which describes the data, and changes with it).
STATUS_RESOURCE = "status"
_ORDER = {key: i for i, key in enumerate([*(r.key for r in RESOURCES), STATUS_RESOURCE])}


@dataclass(frozen=True, slots=True)
class Changes:
    """The documents a publish changed (sorted), and the resources (in ``RESOURCES`` order,
    then ``status``) and state codes (sorted, upper case) they name. False when empty."""

    documents: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    states: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.documents)


def changed_documents(previous: Mapping[str, str], current: Mapping[str, str]) -> tuple[str, ...]:
    """The names whose digest differs between two publishes ({name: digest}): changed,
    added (only in ``current``) or gone (only in ``previous``), sorted."""
    names = previous.keys() | current.keys()
    return tuple(sorted(name for name in names if previous.get(name) != current.get(name)))


def describe(documents: Iterable[str]) -> Changes:
    """The resources and states that changed documents name. ValueError for a name that
    is no published document."""
    names = tuple(sorted(set(documents)))
    resources: set[str] = set()
    states: set[str] = set()
    for name in names:
        if name == STATUS:
            resources.add(STATUS_RESOURCE)
            continue
        resource, _, state = document_of(name)
        resources.add(resource.key)
        if state is not None:
            states.add(state)
    return Changes(names, tuple(sorted(resources, key=_ORDER.__getitem__)), tuple(sorted(states)))


def changes_between(previous: Mapping[str, str], current: Mapping[str, str]) -> Changes:
    """What a publish of ``current`` changed after one of ``previous`` ({name: digest})."""
    return describe(changed_documents(previous, current))
