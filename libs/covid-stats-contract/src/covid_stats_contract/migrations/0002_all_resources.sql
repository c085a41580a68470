-- All five upstream resources, and what the fetcher knows of each upstream response.
-- Each data table mirrors the last good payload of its resource: rows are upserted on
-- their key and rows the payload no longer has are deleted, in one transaction.

CREATE TABLE us_daily (
    date        integer     PRIMARY KEY,
    record      json        NOT NULL,
    fetched_at  timestamptz NOT NULL
);

CREATE TABLE states_daily (
    state       text        NOT NULL CHECK (state ~ '^[A-Z]{2}$'),
    date        integer     NOT NULL,
    record      json        NOT NULL,
    fetched_at  timestamptz NOT NULL,
    PRIMARY KEY (state, date)
);
CREATE INDEX states_daily_date_idx ON states_daily (date);

CREATE TABLE states_info (
    state       text        PRIMARY KEY CHECK (state ~ '^[A-Z]{2}$'),
    record      json        NOT NULL,
    fetched_at  timestamptz NOT NULL
);

-- One row per resource: the validators of its last stored response (for conditional
-- requests), the hash of its body (an unchanged body costs no writes) and its size (the
-- sanity checks compare a new payload with the last good one).
CREATE TABLE upstream_resources (
    resource       text        PRIMARY KEY,
    etag           text,
    last_modified  text,
    content_hash   text        NOT NULL,
    record_count   integer     NOT NULL,
    jurisdictions  integer     NOT NULL,
    fetched_at     timestamptz NOT NULL
);
