//! The queryable state of SPEC §3.3, kept in the `wabridges_*` tables.
//!
//! Processing one event is a list of upserts ([`statements`], pure) run in one transaction
//! ([`apply`]). Every statement is idempotent and order-independent, because workers run events
//! concurrently and `events replay` runs them again: rows keyed by message or call id are
//! inserted once; a value that changes over time is only overwritten by an event that arrived
//! later (higher inbox id) or happened later (higher sender timestamp). So `call_terminated`
//! processed before its `call_incoming` still ends in one call with a duration.

use serde_json::{Map, Value};
use switchboard_core::{Db, on_pool};

use crate::events::{Event, Parsed};

/// A bind value both engines accept.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
}

fn int(v: impl TryInto<i64>) -> Arg {
    Arg::Int(v.try_into().ok())
}
fn text(v: &str) -> Arg {
    Arg::Text(Some(v.to_string()))
}

/// Where an event came from: its bridge, its inbox row (arrival order) and arrival time.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub bridge: &'a str,
    pub event_id: i64,
    pub received_secs: i64,
}

const TOUCH_BRIDGE: &str = "INSERT INTO wabridges_bridges (bridge, last_event, last_event_at, last_event_id, first_seen_at)
    VALUES ($1, $2, $3, $4, $3)
    ON CONFLICT (bridge) DO UPDATE SET last_event = excluded.last_event,
        last_event_at = excluded.last_event_at, last_event_id = excluded.last_event_id
    WHERE wabridges_bridges.last_event_id < excluded.last_event_id";

const CONNECTION: &str = "UPDATE wabridges_bridges
    SET connection = $2, connection_at = $3, connection_event = $4
    WHERE bridge = $1 AND (connection_event IS NULL OR connection_event < $4)";

// Guarded on its own: a `connected` processed after a later `disconnected` still names the phone.
const PHONE: &str = "UPDATE wabridges_bridges SET phone = $2, phone_event = $3
    WHERE bridge = $1 AND (phone_event IS NULL OR phone_event < $3)";

const SYNC_PREVIEW: &str = "UPDATE wabridges_bridges
    SET sync_total = $2, sync_messages = $3, sync_notifications = $4, sync_receipts = $5,
        sync_app_data_changes = $6, sync_started_at = $7, sync_preview_event = $8
    WHERE bridge = $1 AND (sync_preview_event IS NULL OR sync_preview_event < $8)";

const SYNC_COMPLETED: &str = "UPDATE wabridges_bridges
    SET sync_completed_count = $2, sync_completed_at = $3, sync_completed_event = $4
    WHERE bridge = $1 AND (sync_completed_event IS NULL OR sync_completed_event < $4)";

const PICTURE: &str = "UPDATE wabridges_bridges
    SET picture_id = $2, picture_removed = $3, picture_updated_at = $4
    WHERE bridge = $1 AND (picture_updated_at IS NULL OR picture_updated_at <= $4)";

// A contact's name is the latest non-empty push name; phone is kept once known.
const CONTACT: &str = "INSERT INTO wabridges_contacts (bridge, contact_id, phone, name, last_seen_at, first_event)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (bridge, contact_id) DO UPDATE SET
        phone = COALESCE(excluded.phone, wabridges_contacts.phone),
        name = CASE
            WHEN excluded.name IS NULL OR excluded.name = '' THEN wabridges_contacts.name
            WHEN wabridges_contacts.name IS NULL OR wabridges_contacts.name = '' THEN excluded.name
            WHEN excluded.last_seen_at >= COALESCE(wabridges_contacts.last_seen_at, 0) THEN excluded.name
            ELSE wabridges_contacts.name END,
        last_seen_at = CASE
            WHEN wabridges_contacts.last_seen_at IS NULL OR excluded.last_seen_at > wabridges_contacts.last_seen_at
            THEN excluded.last_seen_at ELSE wabridges_contacts.last_seen_at END,
        first_event = CASE WHEN excluded.first_event < wabridges_contacts.first_event
            THEN excluded.first_event ELSE wabridges_contacts.first_event END";

const CHAT: &str =
    "INSERT INTO wabridges_chats (bridge, chat_id, is_group, last_message_id, last_message_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (bridge, chat_id) DO UPDATE SET
        last_message_id = excluded.last_message_id, last_message_at = excluded.last_message_at
    WHERE wabridges_chats.last_message_at IS NULL
       OR excluded.last_message_at > wabridges_chats.last_message_at
       OR (excluded.last_message_at = wabridges_chats.last_message_at
           AND excluded.last_message_id > wabridges_chats.last_message_id)";

const MESSAGE: &str = "INSERT INTO wabridges_messages
    (bridge, message_id, chat_id, contact_id, phone, name, body, kind, media_type, is_group, from_me, sent_at, event)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
    ON CONFLICT (bridge, message_id) DO NOTHING";

const CALL_INCOMING: &str =
    "INSERT INTO wabridges_calls (bridge, call_id, contact_id, platform, started_at, first_event)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (bridge, call_id) DO UPDATE SET
        platform = excluded.platform, started_at = excluded.started_at,
        first_event = CASE WHEN excluded.first_event < wabridges_calls.first_event
            THEN excluded.first_event ELSE wabridges_calls.first_event END";

const CALL_TERMINATED: &str =
    "INSERT INTO wabridges_calls (bridge, call_id, contact_id, ended_at, reason, first_event)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (bridge, call_id) DO UPDATE SET
        ended_at = excluded.ended_at, reason = excluded.reason,
        first_event = CASE WHEN excluded.first_event < wabridges_calls.first_event
            THEN excluded.first_event ELSE wabridges_calls.first_event END";

const POLL_VOTE: &str = "INSERT INTO wabridges_poll_votes
    (bridge, message_id, poll_id, chat_id, contact_id, phone, name, from_me, voted_at, selected_options)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (bridge, message_id) DO NOTHING";

const EVENT_RESPONSE: &str = "INSERT INTO wabridges_event_responses
    (bridge, message_id, event_id, chat_id, contact_id, phone, name, from_me, responded_at, response, extra_guest_count)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (bridge, message_id) DO NOTHING";

/// The statements that fold `parsed` into the state, in order (the bridge row first: the
/// `UPDATE`s on it need it to exist).
pub fn statements(o: &Origin<'_>, parsed: &Parsed) -> Vec<(&'static str, Vec<Arg>)> {
    let b = || text(o.bridge);
    let mut out = vec![(
        TOUCH_BRIDGE,
        vec![
            b(),
            text(parsed.event_type()),
            int(o.received_secs),
            int(o.event_id),
        ],
    )];
    let contact = |id: &str, phone: Option<&str>, name: Option<&str>, seen: Option<i64>| {
        (
            CONTACT,
            vec![
                b(),
                text(id),
                Arg::Text(phone.map(str::to_string)),
                Arg::Text(name.map(str::to_string)),
                Arg::Int(seen),
                int(o.event_id),
            ],
        )
    };
    let Parsed::Known(event) = parsed else {
        return out;
    };
    match event {
        Event::Message(m) => {
            // The bridge's own messages name the bridge's own number, not a contact.
            if !m.from_me {
                out.push(contact(
                    &m.contact_id,
                    Some(&m.phone),
                    Some(&m.name),
                    Some(m.timestamp),
                ));
            }
            out.push((
                CHAT,
                vec![
                    b(),
                    text(&m.chat_id),
                    Arg::Bool(m.is_group),
                    text(&m.message_id),
                    int(m.timestamp),
                ],
            ));
            out.push((
                MESSAGE,
                vec![
                    b(),
                    text(&m.message_id),
                    text(&m.chat_id),
                    text(&m.contact_id),
                    text(&m.phone),
                    text(&m.name),
                    text(&m.body),
                    text(&m.kind),
                    text(&m.media_type),
                    Arg::Bool(m.is_group),
                    Arg::Bool(m.from_me),
                    int(m.timestamp),
                    int(o.event_id),
                ],
            ));
        }
        Event::Connected(c) => {
            out.push((
                CONNECTION,
                vec![
                    b(),
                    text("connected"),
                    int(o.received_secs),
                    int(o.event_id),
                ],
            ));
            out.push((PHONE, vec![b(), text(&c.phone), int(o.event_id)]));
        }
        Event::Disconnected(_) => out.push((
            CONNECTION,
            vec![
                b(),
                text("disconnected"),
                int(o.received_secs),
                int(o.event_id),
            ],
        )),
        Event::Typing(t) => out.push(contact(&t.contact_id, None, None, None)),
        Event::PollVote(v) => {
            if !v.from_me {
                out.push(contact(
                    &v.contact_id,
                    Some(&v.phone),
                    Some(&v.name),
                    Some(v.timestamp),
                ));
            }
            out.push((
                POLL_VOTE,
                vec![
                    b(),
                    text(&v.message_id),
                    text(&v.poll_id),
                    text(&v.chat_id),
                    text(&v.contact_id),
                    text(&v.phone),
                    text(&v.name),
                    Arg::Bool(v.from_me),
                    int(v.timestamp),
                    Arg::Text(Some(
                        serde_json::to_string(&v.selected_options).expect("strings serialise"),
                    )),
                ],
            ));
        }
        Event::EventResponse(r) => {
            if !r.from_me {
                out.push(contact(
                    &r.contact_id,
                    Some(&r.phone),
                    Some(&r.name),
                    Some(r.timestamp),
                ));
            }
            out.push((
                EVENT_RESPONSE,
                vec![
                    b(),
                    text(&r.message_id),
                    text(&r.event_id),
                    text(&r.chat_id),
                    text(&r.contact_id),
                    text(&r.phone),
                    text(&r.name),
                    Arg::Bool(r.from_me),
                    int(r.timestamp),
                    text(r.response.as_str()),
                    int(r.extra_guest_count),
                ],
            ));
        }
        Event::CallIncoming(c) => {
            out.push(contact(
                &c.contact_id,
                phone_of(&c.contact_id),
                None,
                Some(c.timestamp),
            ));
            out.push((
                CALL_INCOMING,
                vec![
                    b(),
                    text(&c.call_id),
                    text(&c.contact_id),
                    text(&c.platform),
                    int(c.timestamp),
                    int(o.event_id),
                ],
            ));
        }
        Event::CallTerminated(c) => {
            out.push(contact(
                &c.contact_id,
                phone_of(&c.contact_id),
                None,
                Some(c.timestamp),
            ));
            out.push((
                CALL_TERMINATED,
                vec![
                    b(),
                    text(&c.call_id),
                    text(&c.contact_id),
                    int(c.timestamp),
                    text(c.reason.as_str()),
                    int(o.event_id),
                ],
            ));
        }
        Event::OfflineSyncPreview(p) => out.push((
            SYNC_PREVIEW,
            vec![
                b(),
                int(p.total),
                int(p.messages),
                int(p.notifications),
                int(p.receipts),
                int(p.app_data_changes),
                int(o.received_secs),
                int(o.event_id),
            ],
        )),
        Event::OfflineSyncCompleted(c) => out.push((
            SYNC_COMPLETED,
            vec![b(), int(c.count), int(o.received_secs), int(o.event_id)],
        )),
        Event::ProfilePictureUpdated(p) => out.push((
            PICTURE,
            vec![
                b(),
                Arg::Text(p.picture_id.clone()),
                Arg::Bool(p.remove),
                int(p.timestamp),
            ],
        )),
    }
    out
}

/// A phone number is the user part of a personal JID (`15550001234@s.whatsapp.net`).
fn phone_of(jid: &str) -> Option<&str> {
    jid.strip_suffix("@s.whatsapp.net")
        .map(|u| u.split(':').next().unwrap_or(u))
        .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()))
}

/// Folds one event into the state, all or nothing.
pub async fn apply(db: &Db, origin: &Origin<'_>, parsed: &Parsed) -> Result<(), sqlx::Error> {
    let statements = statements(origin, parsed);
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        for (sql, args) in &statements {
            let mut q = sqlx::query(*sql);
            for a in args {
                q = match a {
                    Arg::Int(v) => q.bind(*v),
                    Arg::Text(v) => q.bind(v.clone()),
                    Arg::Bool(v) => q.bind(*v),
                };
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    })
}

/// How a column is read back into JSON.
#[derive(Clone, Copy)]
enum Col {
    Int,
    Text,
    Bool,
    /// Text holding JSON (`selected_options`).
    Json,
}

fn to_json<R>(r: &R, cols: &[(&str, Col)]) -> Result<Map<String, Value>, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<bool>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut m = Map::new();
    for (name, col) in cols {
        let v = match col {
            Col::Int => r.try_get::<Option<i64>, _>(*name)?.into(),
            Col::Text => r.try_get::<Option<String>, _>(*name)?.into(),
            Col::Bool => r.try_get::<Option<bool>, _>(*name)?.into(),
            Col::Json => r
                .try_get::<Option<String>, _>(*name)?
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null),
        };
        m.insert((*name).to_string(), v);
    }
    Ok(m)
}

/// Runs a SELECT with `args` and reads `cols` of each row.
async fn select(
    db: &Db,
    sql: &'static str,
    args: Vec<Arg>,
    cols: &[(&str, Col)],
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    on_pool!(db, |p| {
        let mut q = sqlx::query(sql);
        for a in &args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::Bool(v) => q.bind(*v),
            };
        }
        let rows = q.fetch_all(p).await?;
        rows.iter()
            .map(|r| to_json(r, cols))
            .collect::<Result<Vec<_>, _>>()
    })
}

const BRIDGE_COLS: &[(&str, Col)] = &[
    ("bridge", Col::Text),
    ("phone", Col::Text),
    ("connection", Col::Text),
    ("connection_at", Col::Int),
    ("last_event", Col::Text),
    ("last_event_at", Col::Int),
    ("sync_state", Col::Text),
    ("sync_total", Col::Int),
    ("sync_messages", Col::Int),
    ("sync_notifications", Col::Int),
    ("sync_receipts", Col::Int),
    ("sync_app_data_changes", Col::Int),
    ("sync_completed_count", Col::Int),
    ("sync_started_at", Col::Int),
    ("sync_completed_at", Col::Int),
    ("picture_id", Col::Text),
    ("picture_removed", Col::Bool),
    ("picture_updated_at", Col::Int),
    ("first_seen_at", Col::Int),
];

/// Bridges by name, after `after` (names sort; a deployment has a handful).
pub async fn bridges(
    db: &Db,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    select(
        db,
        "SELECT bridge, phone, connection, connection_at, last_event, last_event_at,
            CASE WHEN sync_completed_event IS NOT NULL
                      AND sync_completed_event > COALESCE(sync_preview_event, 0) THEN 'completed'
                 WHEN sync_preview_event IS NOT NULL THEN 'syncing' END AS sync_state,
            sync_total, sync_messages, sync_notifications, sync_receipts, sync_app_data_changes,
            sync_completed_count, sync_started_at, sync_completed_at,
            picture_id, picture_removed, picture_updated_at, first_seen_at
         FROM wabridges_bridges WHERE ($1 IS NULL OR bridge > $1) ORDER BY bridge LIMIT $2",
        vec![Arg::Text(after.map(str::to_string)), Arg::Int(Some(limit))],
        BRIDGE_COLS,
    )
    .await
}

pub async fn bridge_exists(db: &Db, bridge: &str) -> Result<bool, sqlx::Error> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, (i64,)>(
        "SELECT COUNT(*) FROM wabridges_bridges WHERE bridge = $1"
    )
    .bind(bridge)
    .fetch_one(p)
    .await)?
    .0 > 0)
}

const MESSAGE_COLS: &[(&str, Col)] = &[
    ("message_id", Col::Text),
    ("chat_id", Col::Text),
    ("contact_id", Col::Text),
    ("phone", Col::Text),
    ("name", Col::Text),
    ("body", Col::Text),
    ("type", Col::Text),
    ("media_type", Col::Text),
    ("is_group", Col::Bool),
    ("from_me", Col::Bool),
    ("timestamp", Col::Int),
    ("event", Col::Int),
];

/// Newest first by the sender's time (offline-sync backlogs arrive late but sort where they
/// belong); `before` is the (timestamp, event) of the last row of the previous page.
pub async fn messages(
    db: &Db,
    bridge: &str,
    chat_id: Option<&str>,
    before: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    let (ts, ev) = before.unzip();
    select(
        db,
        "SELECT message_id, chat_id, contact_id, phone, name, body, kind AS type, media_type,
                is_group, from_me, sent_at AS timestamp, event
         FROM wabridges_messages
         WHERE bridge = $1 AND ($2 IS NULL OR chat_id = $2)
           AND ($3 IS NULL OR sent_at < $3 OR (sent_at = $3 AND event < $4))
         ORDER BY sent_at DESC, event DESC LIMIT $5",
        vec![
            text(bridge),
            Arg::Text(chat_id.map(str::to_string)),
            Arg::Int(ts),
            Arg::Int(ev),
            Arg::Int(Some(limit)),
        ],
        MESSAGE_COLS,
    )
    .await
}

const CONTACT_COLS: &[(&str, Col)] = &[
    ("contact_id", Col::Text),
    ("phone", Col::Text),
    ("name", Col::Text),
    ("last_seen_at", Col::Int),
    ("first_event", Col::Int),
];

/// Newest contact first (by the event that first named them); `before` is a `first_event`.
pub async fn contacts(
    db: &Db,
    bridge: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    select(
        db,
        "SELECT contact_id, phone, name, last_seen_at, first_event FROM wabridges_contacts
         WHERE bridge = $1 AND ($2 IS NULL OR first_event < $2)
         ORDER BY first_event DESC LIMIT $3",
        vec![text(bridge), Arg::Int(before), Arg::Int(Some(limit))],
        CONTACT_COLS,
    )
    .await
}

const CALL_COLS: &[(&str, Col)] = &[
    ("call_id", Col::Text),
    ("contact_id", Col::Text),
    ("platform", Col::Text),
    ("state", Col::Text),
    ("started_at", Col::Int),
    ("ended_at", Col::Int),
    ("reason", Col::Text),
    ("duration_secs", Col::Int),
    ("first_event", Col::Int),
];

/// Newest call first; `before` is a `first_event`. A call whose end arrived without its start
/// (or the other way round) shows what is known and no duration.
pub async fn calls(
    db: &Db,
    bridge: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    select(
        db,
        "SELECT call_id, contact_id, platform,
            CASE WHEN ended_at IS NOT NULL THEN 'ended' ELSE 'ringing' END AS state,
            started_at, ended_at, reason,
            CASE WHEN started_at IS NOT NULL AND ended_at IS NOT NULL
                 THEN ended_at - started_at END AS duration_secs,
            first_event
         FROM wabridges_calls WHERE bridge = $1 AND ($2 IS NULL OR first_event < $2)
         ORDER BY first_event DESC LIMIT $3",
        vec![text(bridge), Arg::Int(before), Arg::Int(Some(limit))],
        CALL_COLS,
    )
    .await
}

const VOTE_COLS: &[(&str, Col)] = &[
    ("message_id", Col::Text),
    ("poll_id", Col::Text),
    ("chat_id", Col::Text),
    ("contact_id", Col::Text),
    ("name", Col::Text),
    ("from_me", Col::Bool),
    ("timestamp", Col::Int),
    ("selected_options", Col::Json),
];

/// Every vote cast on a poll, oldest first: a voter's last vote is the one that counts.
pub async fn poll_votes(
    db: &Db,
    bridge: &str,
    poll_id: &str,
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    select(
        db,
        "SELECT message_id, poll_id, chat_id, contact_id, name, from_me,
                voted_at AS timestamp, selected_options
         FROM wabridges_poll_votes WHERE bridge = $1 AND poll_id = $2
         ORDER BY voted_at, message_id LIMIT 1000",
        vec![text(bridge), text(poll_id)],
        VOTE_COLS,
    )
    .await
}

const RESPONSE_COLS: &[(&str, Col)] = &[
    ("message_id", Col::Text),
    ("event_id", Col::Text),
    ("chat_id", Col::Text),
    ("contact_id", Col::Text),
    ("name", Col::Text),
    ("from_me", Col::Bool),
    ("timestamp", Col::Int),
    ("response", Col::Text),
    ("extra_guest_count", Col::Int),
];

/// Every answer to a WhatsApp event invitation, oldest first.
pub async fn event_responses(
    db: &Db,
    bridge: &str,
    event_id: &str,
) -> Result<Vec<Map<String, Value>>, sqlx::Error> {
    select(
        db,
        "SELECT message_id, event_id, chat_id, contact_id, name, from_me,
                responded_at AS timestamp, response, extra_guest_count
         FROM wabridges_event_responses WHERE bridge = $1 AND event_id = $2
         ORDER BY responded_at, message_id LIMIT 1000",
        vec![text(bridge), text(event_id)],
        RESPONSE_COLS,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_come_from_personal_jids_only() {
        assert_eq!(phone_of("15550001234@s.whatsapp.net"), Some("15550001234"));
        assert_eq!(
            phone_of("15550001234:12@s.whatsapp.net"),
            Some("15550001234")
        );
        assert_eq!(phone_of("120363025246125486@g.us"), None);
        assert_eq!(phone_of("abc@s.whatsapp.net"), None);
    }

    #[test]
    fn every_event_touches_its_bridge_first() {
        let o = Origin {
            bridge: "b",
            event_id: 7,
            received_secs: 1,
        };
        for parsed in [
            Parsed::Unknown("x".into()),
            crate::events::parse(br#"{"event":"disconnected"}"#).unwrap(),
        ] {
            let s = statements(&o, &parsed);
            assert_eq!(s[0].0, TOUCH_BRIDGE);
            assert_eq!(s[0].1[0], Arg::Text(Some("b".into())));
        }
    }
}
