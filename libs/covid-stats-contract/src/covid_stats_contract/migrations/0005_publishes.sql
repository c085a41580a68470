-- The publishes log (GET /v1/changes.json) and the webhook deliveries (an outbox). Additive:
-- three new tables; releases before it neither read nor write them (a rollback leaves them
-- as they are: that release publishes without logging, and its publishes reach no webhook).

-- The digest of every document as last logged: what the next publish is compared with
-- (``covid_stats_contract.changes``), so a republish of the same data (Redis flushed) logs
-- nothing.
CREATE TABLE published_documents (
    name          text        PRIMARY KEY,
    content_hash  text        NOT NULL,
    publish_id    bigint      NOT NULL
);

-- One row per publish that changed at least one document: when, which snapshot, and what
-- changed (resource keys such as `states/daily`, state codes as the upstream writes them,
-- and the changed document names).
CREATE TABLE publishes (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    snapshot_id   text        NOT NULL,
    published_at  timestamptz NOT NULL,
    resources     text[]      NOT NULL,
    states        text[]      NOT NULL,
    documents     text[]      NOT NULL
);
CREATE INDEX publishes_published_at_idx ON publishes (published_at, id);

-- One row per (publish, webhook URL), written in the publish's own transaction; the leader
-- claims a due row (claimed_by: its lease value, until claimed_until) before it sends.
CREATE TABLE webhook_deliveries (
    publish_id       bigint      NOT NULL REFERENCES publishes (id) ON DELETE CASCADE,
    url              text        NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_by       text,
    claimed_until    timestamptz,
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (publish_id, url)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
