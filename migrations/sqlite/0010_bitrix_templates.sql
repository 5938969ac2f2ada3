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
