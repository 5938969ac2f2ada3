-- The message templates of the WhatsApp Business Account, as Meta last listed them: what an
-- operator may send after the 24-hour window, and which variables each one needs. A sync
-- replaces the whole list, so a template deleted at Meta disappears here too.
CREATE TABLE bitrix_templates (
    name       TEXT   NOT NULL,
    language   TEXT   NOT NULL,
    category   TEXT   NOT NULL,
    -- APPROVED, PAUSED, DISABLED, PENDING, REJECTED…: only an approved one is sent.
    status     TEXT   NOT NULL,
    -- Meta's `components` (header, body, footer, buttons) as JSON text.
    components TEXT   NOT NULL,
    synced_at  BIGINT NOT NULL,
    PRIMARY KEY (name, language)
);

-- Templates sent first through the API under the caller's Idempotency-Key: a retried call
-- answers with the first one's message instead of sending the template again. wamid is NULL
-- while the first call is still sending.
CREATE TABLE bitrix_first_sends (
    idempotency_key TEXT   PRIMARY KEY,
    wamid           TEXT,
    answer          TEXT,
    created_at      BIGINT NOT NULL
);
