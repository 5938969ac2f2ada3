-- Where each inbound message stands in its customer's order: Meta's timestamp, then the inbox
-- row that carried it, then its place in that notification. A customer's messages reach
-- Bitrix in this order; rows stored before this column existed are not held to it.
ALTER TABLE bitrix_inbound ADD COLUMN sent_at BIGINT;
ALTER TABLE bitrix_inbound ADD COLUMN inbox_id BIGINT;
ALTER TABLE bitrix_inbound ADD COLUMN seq INTEGER;
CREATE INDEX bitrix_inbound_unrelayed ON bitrix_inbound (wa_id, sent_at, inbox_id, seq)
    WHERE relayed_at IS NULL;
