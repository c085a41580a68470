-- The latest records the upstream served, one row per (state, date) / date.
-- `record` is the upstream record as compact JSON text in the upstream's key order
-- (type json, not jsonb: json keeps the text, so documents rebuilt from here are
-- byte-identical to the ones the fetcher publishes).

CREATE TABLE us_current (
    date        integer     PRIMARY KEY,
    record      json        NOT NULL,
    fetched_at  timestamptz NOT NULL
);

CREATE TABLE states_current (
    state       text        NOT NULL CHECK (state ~ '^[A-Z]{2}$'),
    date        integer     NOT NULL,
    record      json        NOT NULL,
    fetched_at  timestamptz NOT NULL,
    PRIMARY KEY (state, date)
);
