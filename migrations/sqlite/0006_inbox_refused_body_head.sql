-- A refused call keeps only the head of its body (anyone can send one, so storing it whole let
-- strangers fill the disk). These say what the whole body was: its length in bytes and its
-- SHA-256 (hex). NULL on rows whose body is stored whole.
ALTER TABLE inbox_events ADD COLUMN body_size INTEGER;
ALTER TABLE inbox_events ADD COLUMN body_sha256 TEXT;
