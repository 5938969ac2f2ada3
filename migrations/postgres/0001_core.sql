-- Core tables: the webhook inbox / audit log, the encrypted credential store, scheduler leases.
-- Times are Unix milliseconds (portable between SQLite and PostgreSQL).

CREATE TABLE inbox_events (
    id            BIGSERIAL PRIMARY KEY,
    request_id    TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    route         TEXT    NOT NULL,
    -- Set only on the first delivery of a key; duplicates keep the key in dedupe_ref, so the
    -- unique index below decides "new or duplicate" atomically, across processes.
    dedupe_key    TEXT,
    dedupe_ref    TEXT,
    status        TEXT    NOT NULL,
    body          BYTEA   NOT NULL,
    headers       TEXT    NOT NULL DEFAULT '{}',
    received_at   BIGINT  NOT NULL,
    duration_ms   BIGINT,
    error         TEXT,
    -- A row with work to do is handed to the job queue; NULL here after a crash means the
    -- hand-off never happened and start-up recovery must do it.
    dispatched_at BIGINT,
    claimed_until BIGINT,
    -- Bumped by replay so the re-dispatch gets a fresh job idempotency key.
    replays       BIGINT  NOT NULL DEFAULT 0,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    processed_at  BIGINT,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX inbox_events_status ON inbox_events (status, received_at);
CREATE INDEX inbox_events_received ON inbox_events (received_at);
CREATE INDEX inbox_events_undispatched ON inbox_events (dispatched_at) WHERE dispatched_at IS NULL;

CREATE TABLE credentials (
    name       TEXT PRIMARY KEY,
    value      TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL
);

CREATE TABLE scheduler_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT    NOT NULL,
    until_ms   BIGINT  NOT NULL,
    last_run   BIGINT
);
