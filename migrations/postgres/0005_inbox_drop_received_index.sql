-- Every acknowledged webhook paid for this index on the ack path (one more b-tree insert and
-- one more page per commit), and no query can use it: retention pruning filters by status
-- too and is served by inbox_events_status (status, received_at); the replay selection's
-- optional filters keep any index out of its plan.
DROP INDEX IF EXISTS inbox_events_received;
