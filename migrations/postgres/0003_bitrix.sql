-- Bitrix24 connector state. Times are Unix milliseconds.

-- One row per WhatsApp customer; last_inbound_at comes from the message's own timestamp
-- (webhooks can arrive days late) and feeds the 24-hour window guard.
CREATE TABLE bitrix_customers (
    wa_id           TEXT PRIMARY KEY,
    name            TEXT,
    last_inbound_at BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);

-- One row per inbound wamid: the unit-level dedupe key, and whether it reached Bitrix yet.
CREATE TABLE bitrix_inbound (
    wamid          TEXT PRIMARY KEY,
    wa_id          TEXT    NOT NULL,
    received_at    BIGINT  NOT NULL,
    relayed_at     BIGINT,
    bitrix_chat_id TEXT
);

-- Meta statuses seen, deduped on (wamid, status).
CREATE TABLE bitrix_statuses (
    wamid       TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (wamid, status)
);

-- One lead per phone: the row is claimed before crm.lead.add, so two workers (or processes)
-- can never both create one.
CREATE TABLE bitrix_leads (
    phone      TEXT PRIMARY KEY,
    lead_id    TEXT,
    claimed_at BIGINT  NOT NULL,
    created_at BIGINT
);

-- Operator message ↔ wamid: delivery and read statuses from Meta find their Bitrix message here.
CREATE TABLE bitrix_messages (
    bitrix_message_id TEXT PRIMARY KEY,
    bitrix_chat_id    TEXT    NOT NULL,
    wa_id             TEXT    NOT NULL,
    wamid             TEXT UNIQUE,
    state             TEXT    NOT NULL,
    error             TEXT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);

-- Re-hosted media under /media/{id}: id is a random 128-bit token, source_key makes a retry
-- reuse the row it stored before.
CREATE TABLE bitrix_media (
    id         TEXT PRIMARY KEY,
    source_key TEXT UNIQUE,
    mime       TEXT    NOT NULL,
    filename   TEXT    NOT NULL,
    bytes      BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX bitrix_media_expires ON bitrix_media (expires_at);
