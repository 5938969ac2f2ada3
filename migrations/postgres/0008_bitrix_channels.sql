-- Channels: several WhatsApp numbers, each relayed into its own Open Channel line. A
-- customer's order and 24-hour window are kept per (channel, customer), the channel being the
-- business number's phone_number_id; the CRM lead stays one per phone. Rows from before get
-- the empty channel, which the connector hands to the channel of meta.phone_number_id /
-- bitrix.line_id the first time it resolves its channels (a migration can't read settings).
ALTER TABLE bitrix_inbound ADD COLUMN channel TEXT NOT NULL DEFAULT '';
DROP INDEX bitrix_inbound_unrelayed;
CREATE INDEX bitrix_inbound_unrelayed ON bitrix_inbound (channel, wa_id, sent_at, inbox_id, seq)
    WHERE relayed_at IS NULL;

-- The channel of each operator reply (the number it is sent from), and the times the
-- per-channel traffic on / is counted over.
ALTER TABLE bitrix_messages ADD COLUMN channel TEXT NOT NULL DEFAULT '';
CREATE INDEX bitrix_inbound_received ON bitrix_inbound (received_at);
CREATE INDEX bitrix_messages_created ON bitrix_messages (created_at);

-- When the customer last wrote to the channel's number (the message's own timestamp, Unix
-- ms): WhatsApp's 24-hour window is per business number.
CREATE TABLE bitrix_windows (
    channel         TEXT   NOT NULL,
    wa_id           TEXT   NOT NULL,
    last_inbound_at BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (channel, wa_id)
);
INSERT INTO bitrix_windows (channel, wa_id, last_inbound_at, updated_at)
    SELECT '', wa_id, last_inbound_at, updated_at FROM bitrix_customers;

-- Numbers Meta posted messages for that no channel serves: answered, not relayed, and listed
-- on /setup until a channel is added for them.
CREATE TABLE bitrix_unknown_numbers (
    phone_number_id TEXT   PRIMARY KEY,
    first_seen_at   BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL
);
