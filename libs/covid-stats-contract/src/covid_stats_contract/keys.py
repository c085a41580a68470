"""Redis key names. Nothing outside this module spells a key.

Layout (``{p}`` is the prefix, ``covid-stats`` unless configured)::

    {p}:snapshot:seq                 INCR counter; each refresh takes the next id
    {p}:snapshot:current             id of the snapshot readers see
    {p}:snapshot:{id}:docs           SET of the document names in snapshot {id}
    {p}:snapshot:{id}:doc:{name}     HASH of one document (see ``documents.Document``)
    {p}:snapshot:{id}:meta           HASH about the snapshot (published_at, resources' freshness)
    {p}:snapshot:{id}:query:{digest} HASH, the api's cached answer to a query (body, etag,
                                     content_type), with a TTL; keyed by the snapshot, so a
                                     new snapshot never serves an old answer
    {p}:snapshot:{id}:query:{digest}:fill  lock (SET NX PX) of the worker filling it
    {p}:snapshot:{id}:span           the api's facts about snapshot {id}'s data (JSON: states,
                                     dates, record sizes), with the query answers' TTL
    {p}:queries:lru                  ZSET of every cached answer's key, by last use (µs)
    {p}:queries:sizes                HASH answer key -> the bytes it is counted for
    {p}:queries:used                 the bytes counted for all of them (the budget's meter)
    {p}:fetcher:leader               the fetcher leader's lease: "<fencing token>:<holder id>"
    {p}:fetcher:leader:token         INCR counter of fencing tokens
    {p}:fetcher:refresh              pub/sub channel: "refresh now" (POST /refresh on any replica)
    {p}:fetcher:purge:{url digest}   SET of the surrogate keys the leader has yet to purge at one
                                     PURGE_URLS URL (a new leader takes them up)

A snapshot's keys carry a TTL while it is being written and after it stops being current
(the grace period); the current snapshot's keys have none. The query answers are kept under
a byte budget by ``snapshots.SnapshotStore.store_query`` (least recently used out first),
besides their TTL.
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
        self.leader = f"{prefix}:fetcher:leader"
        self.leader_token = f"{prefix}:fetcher:leader:token"
        self.refresh_channel = f"{prefix}:fetcher:refresh"
        self.query_lru = f"{prefix}:queries:lru"
        self.query_sizes = f"{prefix}:queries:sizes"
        self.query_used = f"{prefix}:queries:used"

    def snapshot_base(self, snapshot_id: str) -> str:
        return f"{self.prefix}:snapshot:{snapshot_id}"

    def snapshot_docs(self, snapshot_id: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:docs"

    def snapshot_meta(self, snapshot_id: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:meta"

    def snapshot_span(self, snapshot_id: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:span"

    def query(self, snapshot_id: str, digest: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:query:{digest}"

    def query_fill(self, snapshot_id: str, digest: str) -> str:
        """Lock held by the one api worker computing an answer (other workers wait)."""
        return f"{self.query(snapshot_id, digest)}:fill"

    def purge_pending(self, url_digest: str) -> str:
        """The keys waiting to be purged at one edge URL (named by a digest: a URL may hold
        a credential)."""
        return f"{self.prefix}:fetcher:purge:{url_digest}"

    def document(self, snapshot_id: str, name: str) -> str:
        return f"{self.snapshot_base(snapshot_id)}:doc:{name}"
