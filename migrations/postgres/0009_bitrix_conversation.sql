-- The whole conversation: what each message said, so a reply or reaction can quote it; the
-- customer's other identities; alerts about the connector raised by Bitrix24 events.

-- The text the operator saw for a customer message (shortened), quoted when the customer
-- replies or reacts to it.
ALTER TABLE bitrix_inbound ADD COLUMN body TEXT;

-- The text an operator's reply sent, quoted when the customer replies or reacts to it.
ALTER TABLE bitrix_messages ADD COLUMN body TEXT;

-- A customer is keyed by the id their chat was opened with (wa_id, or the business-scoped user
-- id of a customer who hides their number). phone is the number replies go to now (it moves
-- when the customer changes number), user_id the business-scoped user id, username the
-- WhatsApp username.
ALTER TABLE bitrix_customers ADD COLUMN phone TEXT;
ALTER TABLE bitrix_customers ADD COLUMN user_id TEXT;
ALTER TABLE bitrix_customers ADD COLUMN username TEXT;
CREATE INDEX bitrix_customers_phone ON bitrix_customers (phone);
CREATE INDEX bitrix_customers_user_id ON bitrix_customers (user_id);

-- Problems Bitrix24 reported by event (the Open Channel line or the connector deleted): the
-- bridge is degraded on /health and /setup shows a failing row until the connector is
-- activated again.
CREATE TABLE bitrix_alerts (
    name      TEXT   PRIMARY KEY,
    reason    TEXT   NOT NULL,
    raised_at BIGINT NOT NULL
);
