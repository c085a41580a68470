-- Every revision of every record, bitemporal (additive: new tables and triggers; nothing a
-- release before it reads or writes changes name, type or meaning).
--
-- One version table per resource table, `<table>_versions`: the record's key (its date,
-- the record date of the data), `record` as it was stored (NULL: the upstream stopped
-- serving the key), `first_seen` (the moment the fetcher first stored that record: the
-- `fetched_at` of the refresh that wrote it; a removal: the time of its transaction).
-- A key's versions in `version_id` order are its history; the newest is what the resource
-- table holds. Which snapshot first served a version: `record_versions_published`.
--
-- Triggers on the resource tables write the versions, so every release's writes are kept,
-- an older release's too (a rollback keeps history). A statement trigger with transition
-- tables adds one INSERT ... SELECT per statement: an upsert that changes no row (a refresh
-- whose records are all the same) adds no version, and an UPDATE that leaves `record` as
-- it was adds none either.

CREATE TABLE us_current_versions (
    version_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    date          integer     NOT NULL,
    record        json,
    first_seen    timestamptz NOT NULL
);
CREATE INDEX us_current_versions_key_idx ON us_current_versions (date, version_id);

CREATE TABLE us_daily_versions (
    version_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    date          integer     NOT NULL,
    record        json,
    first_seen    timestamptz NOT NULL
);
CREATE INDEX us_daily_versions_key_idx ON us_daily_versions (date, version_id);

CREATE TABLE states_current_versions (
    version_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state         text        NOT NULL,
    date          integer     NOT NULL,
    record        json,
    first_seen    timestamptz NOT NULL
);
CREATE INDEX states_current_versions_key_idx
    ON states_current_versions (state, date, version_id);

CREATE TABLE states_daily_versions (
    version_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state         text        NOT NULL,
    date          integer     NOT NULL,
    record        json,
    first_seen    timestamptz NOT NULL
);
CREATE INDEX states_daily_versions_key_idx ON states_daily_versions (state, date, version_id);

CREATE TABLE states_info_versions (
    version_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state         text        NOT NULL,
    record        json,
    first_seen    timestamptz NOT NULL
);
CREATE INDEX states_info_versions_key_idx ON states_info_versions (state, version_id);

-- Which versions each publish served: every version of `version_table` with a version_id up to
-- `up_to` (and above the previous row's) was first served by snapshot `snapshot_id`, current
-- from `published_at` (NULL: staged, not activated yet). Version rows are written once and
-- never updated: a publish adds one row per table that has new versions.
CREATE TABLE record_versions_published (
    version_table  text        NOT NULL,
    up_to          bigint      NOT NULL,
    snapshot_id    bigint,
    published_at   timestamptz,
    PRIMARY KEY (version_table, up_to)
);

-- The records the tables hold now are the first version of each key, already published
-- (by which snapshot is not known: NULL; when: their newest fetched_at).
INSERT INTO us_current_versions (date, record, first_seen)
    SELECT date, record, fetched_at FROM us_current ORDER BY date;
INSERT INTO us_daily_versions (date, record, first_seen)
    SELECT date, record, fetched_at FROM us_daily ORDER BY date;
INSERT INTO states_current_versions (state, date, record, first_seen)
    SELECT state, date, record, fetched_at FROM states_current ORDER BY state, date;
INSERT INTO states_daily_versions (state, date, record, first_seen)
    SELECT state, date, record, fetched_at FROM states_daily ORDER BY state, date;
INSERT INTO states_info_versions (state, record, first_seen)
    SELECT state, record, fetched_at FROM states_info ORDER BY state;
INSERT INTO record_versions_published (version_table, up_to, published_at)
    SELECT 'us_current_versions', max(version_id), max(first_seen) FROM us_current_versions
        HAVING count(*) > 0
    UNION ALL SELECT 'us_daily_versions', max(version_id), max(first_seen) FROM us_daily_versions
        HAVING count(*) > 0
    UNION ALL SELECT 'states_current_versions', max(version_id), max(first_seen)
        FROM states_current_versions HAVING count(*) > 0
    UNION ALL SELECT 'states_daily_versions', max(version_id), max(first_seen)
        FROM states_daily_versions HAVING count(*) > 0
    UNION ALL SELECT 'states_info_versions', max(version_id), max(first_seen)
        FROM states_info_versions HAVING count(*) > 0;

-- TG_ARGV[0]: the table's key columns, comma-separated. The transition tables are
-- `new_rows` (INSERT, UPDATE) and `old_rows` (UPDATE, DELETE).
CREATE FUNCTION record_versions_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO %I (%s, record, first_seen) SELECT %s, record, fetched_at FROM new_rows '
        'ORDER BY %s',
        TG_TABLE_NAME || '_versions', TG_ARGV[0], TG_ARGV[0], TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE FUNCTION record_versions_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO %I (%s, record, first_seen) '
        'SELECT %s, n.record, n.fetched_at FROM new_rows n JOIN old_rows o USING (%s) '
        'WHERE n.record::text IS DISTINCT FROM o.record::text ORDER BY %s',
        TG_TABLE_NAME || '_versions', TG_ARGV[0], TG_ARGV[0], TG_ARGV[0], TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE FUNCTION record_versions_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO %I (%s, record, first_seen) SELECT %s, NULL, now() FROM old_rows '
        'ORDER BY %s',
        TG_TABLE_NAME || '_versions', TG_ARGV[0], TG_ARGV[0], TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER us_current_versions_ins AFTER INSERT ON us_current
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_inserted('date');
CREATE TRIGGER us_current_versions_upd AFTER UPDATE ON us_current
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_updated('date');
CREATE TRIGGER us_current_versions_del AFTER DELETE ON us_current
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_deleted('date');

CREATE TRIGGER us_daily_versions_ins AFTER INSERT ON us_daily
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_inserted('date');
CREATE TRIGGER us_daily_versions_upd AFTER UPDATE ON us_daily
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_updated('date');
CREATE TRIGGER us_daily_versions_del AFTER DELETE ON us_daily
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_deleted('date');

CREATE TRIGGER states_current_versions_ins AFTER INSERT ON states_current
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_inserted('state, date');
CREATE TRIGGER states_current_versions_upd AFTER UPDATE ON states_current
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_updated('state, date');
CREATE TRIGGER states_current_versions_del AFTER DELETE ON states_current
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_deleted('state, date');

CREATE TRIGGER states_daily_versions_ins AFTER INSERT ON states_daily
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_inserted('state, date');
CREATE TRIGGER states_daily_versions_upd AFTER UPDATE ON states_daily
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_updated('state, date');
CREATE TRIGGER states_daily_versions_del AFTER DELETE ON states_daily
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_deleted('state, date');

CREATE TRIGGER states_info_versions_ins AFTER INSERT ON states_info
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_inserted('state');
CREATE TRIGGER states_info_versions_upd AFTER UPDATE ON states_info
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_updated('state');
CREATE TRIGGER states_info_versions_del AFTER DELETE ON states_info
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_versions_deleted('state');
