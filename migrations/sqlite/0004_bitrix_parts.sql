-- The parts of an operator reply that Meta accepted (part 0 = text sent on its own, part n =
-- the n-th file, which may carry the text as caption). A row is written as soon as Meta
-- accepts that part, so a retry after a later part failed skips the parts already sent, and
-- each part's wamid leads Meta's statuses back to its Bitrix message.
CREATE TABLE bitrix_message_parts (
    bitrix_message_id TEXT    NOT NULL,
    part              INTEGER NOT NULL,
    wamid             TEXT    NOT NULL UNIQUE,
    sent_at           INTEGER NOT NULL,
    PRIMARY KEY (bitrix_message_id, part)
);
