-- wabridges hooks: the queryable state kept from processed events (SPEC §3.3).
-- Event times are the sender's Unix seconds; `*_event` columns hold the inbox id of the event
-- that last set a value, so state follows arrival order however workers interleave or replay.

CREATE TABLE wabridges_bridges (
    bridge               TEXT PRIMARY KEY,
    phone                TEXT,
    phone_event          BIGINT,
    -- 'connected' | 'disconnected'; NULL until the first connection event.
    connection           TEXT,
    connection_at        BIGINT,
    connection_event     BIGINT,
    last_event           TEXT    NOT NULL,
    last_event_at        BIGINT NOT NULL,
    last_event_id        BIGINT NOT NULL,
    -- Offline sync: the latest preview's counts and the latest completion's count; which of
    -- the two came last says whether a sync is running.
    sync_total           BIGINT,
    sync_messages        BIGINT,
    sync_notifications   BIGINT,
    sync_receipts        BIGINT,
    sync_app_data_changes BIGINT,
    sync_completed_count BIGINT,
    sync_started_at      BIGINT,
    sync_completed_at    BIGINT,
    sync_preview_event   BIGINT,
    sync_completed_event BIGINT,
    picture_id           TEXT,
    picture_removed      BOOLEAN,
    picture_updated_at   BIGINT,
    first_seen_at        BIGINT NOT NULL
);

CREATE TABLE wabridges_contacts (
    bridge        TEXT    NOT NULL,
    contact_id    TEXT    NOT NULL,
    phone         TEXT,
    name          TEXT,
    last_seen_at  BIGINT,
    first_event   BIGINT NOT NULL,
    PRIMARY KEY (bridge, contact_id)
);
CREATE INDEX wabridges_contacts_page ON wabridges_contacts (bridge, first_event);

CREATE TABLE wabridges_chats (
    bridge          TEXT    NOT NULL,
    chat_id         TEXT    NOT NULL,
    is_group        BOOLEAN NOT NULL,
    last_message_id TEXT,
    last_message_at BIGINT,
    PRIMARY KEY (bridge, chat_id)
);

CREATE TABLE wabridges_messages (
    bridge      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    chat_id     TEXT    NOT NULL,
    contact_id  TEXT    NOT NULL,
    phone       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    media_type  TEXT    NOT NULL,
    is_group    BOOLEAN NOT NULL,
    from_me     BOOLEAN NOT NULL,
    sent_at     BIGINT NOT NULL,
    event       BIGINT NOT NULL,
    PRIMARY KEY (bridge, message_id)
);
CREATE INDEX wabridges_messages_page ON wabridges_messages (bridge, sent_at, event);
CREATE INDEX wabridges_messages_chat ON wabridges_messages (bridge, chat_id, sent_at, event);

CREATE TABLE wabridges_calls (
    bridge      TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    contact_id  TEXT    NOT NULL,
    platform    TEXT,
    started_at  BIGINT,
    ended_at    BIGINT,
    reason      TEXT,
    first_event BIGINT NOT NULL,
    PRIMARY KEY (bridge, call_id)
);
CREATE INDEX wabridges_calls_page ON wabridges_calls (bridge, first_event);

CREATE TABLE wabridges_poll_votes (
    bridge           TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    poll_id          TEXT    NOT NULL,
    chat_id          TEXT    NOT NULL,
    contact_id       TEXT    NOT NULL,
    phone            TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    from_me          BOOLEAN NOT NULL,
    voted_at         BIGINT NOT NULL,
    -- JSON array of option names.
    selected_options TEXT    NOT NULL,
    PRIMARY KEY (bridge, message_id)
);
CREATE INDEX wabridges_poll_votes_poll ON wabridges_poll_votes (bridge, poll_id);

CREATE TABLE wabridges_event_responses (
    bridge            TEXT    NOT NULL,
    message_id        TEXT    NOT NULL,
    event_id          TEXT    NOT NULL,
    chat_id           TEXT    NOT NULL,
    contact_id        TEXT    NOT NULL,
    phone             TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    from_me           BOOLEAN NOT NULL,
    responded_at      BIGINT NOT NULL,
    response          TEXT    NOT NULL,
    extra_guest_count BIGINT NOT NULL,
    PRIMARY KEY (bridge, message_id)
);
CREATE INDEX wabridges_event_responses_event ON wabridges_event_responses (bridge, event_id);
