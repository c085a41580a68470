"""Redis key names. Nothing outside this module spells a key.

Layout (``{p}`` is the prefix, ``covid-stats`` unless configured)::

    {p}:snapshot:seq                 INCR counter; each refresh takes the next id
    {p}:snapshot:current             id of the snapshot readers see
    {p}:snapshot:{id}:docs           SET of the document names in snapshot {id}
    {p}:snapshot:{id}:doc:{name}     HASH of one document (see ``documents.Document``)

A snapshot's keys carry a TTL while it is being written and after it stops being current
(the grace period); the current snapshot's keys have none.
"""

DEFAULT_PREFIX = "covid-stats"


class RedisKeys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"invalid Redis key prefix {prefix!r}")
        self.prefix = prefix
        self.snapshot_seq = f"{prefix}:snapshot:seq"
        self.current_snapshot = f"{prefix}:snapshot:current"

    def snapshot_base(self, snapshot_id: str) -> str:
        return f"{self.prefix}:snapshot:{snapshot_id}"

    def snapshot_docs(self, snapshot_id: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:docs"

    def document(self, snapshot_id: str, name: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:doc:{name}"
