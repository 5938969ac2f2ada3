//! This bridge's tables (migrations `0003_bitrix.sql`, `0004_bitrix_parts.sql`,
//! `0007_bitrix_relay_order.sql`, `0008_bitrix_channels.sql`, `0009_bitrix_conversation.sql`,
//! `0011_bitrix_customer_came_from.sql`), written once with `$n` placeholders
//! for both engines. Every "only once" guarantee here rests on a primary key or unique index
//! and `ON CONFLICT DO NOTHING`, so it holds across worker tasks and across processes.

use switchboard_core::{Db, db::now_ms, inbox::write_with_outcome, on_pool, on_tx};

/// Where an inbound message stands in its customer's order (migration `0006`): Meta's
/// timestamp, the inbox row that carried it, its index in that notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub sent_at: i64,
    pub inbox_id: i64,
    pub seq: i64,
}

/// What an inbound message says about its customer, recorded with it.
pub struct Inbound<'a> {
    pub wamid: &'a str,
    /// The business number it was sent to.
    pub channel: &'a str,
    pub customer: &'a str,
    /// The customer's profile name, when the message carried one.
    pub name: Option<&'a str>,
    pub place: Place,
    /// What the operator will see of it, kept so a later reply or reaction can quote it.
    pub body: Option<&'a str>,
    /// The number it came from (`from`); `None` for a customer who hides their number.
    pub phone: Option<&'a str>,
    /// The business-scoped user id and username, when Meta gave them.
    pub user_id: Option<&'a str>,
    pub username: Option<&'a str>,
    /// The customer's new number, for a `user_changed_number` notice: replies go there from now
    /// on, in the same chat.
    pub moved_to: Option<&'a str>,
    /// The ad or post the message came from, in words; the customer keeps the first one.
    pub came_from: Option<String>,
}

/// How much of a message is kept for quoting.
const BODY_KEPT_CHARS: usize = 500;

/// Records an inbound message: its place in the customer's order, the customer, and the
/// 24-hour window of (channel, customer). Written with the outcome of the notification that
/// carried it ([`write_with_outcome`]), so a message on its way to the operator waits for one
/// commit, not two. `true` at first sight of the wamid; `false` for a redelivery or replay,
/// whose first place stays.
pub async fn record_inbound(db: &Db, m: &Inbound<'_>) -> Result<bool, sqlx::Error> {
    let known: Option<i64> = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM bitrix_inbound WHERE wamid = $1"
    )
    .bind(m.wamid)
    .fetch_optional(p)
    .await)?;
    let message_at_ms = m.place.sent_at * 1000;
    let now = now_ms();
    let (wamid, channel, customer, name, place) = (
        m.wamid.to_string(),
        m.channel.to_string(),
        m.customer.to_string(),
        m.name.map(str::to_string),
        m.place,
    );
    let body: Option<String> = m.body.map(|b| b.chars().take(BODY_KEPT_CHARS).collect());
    let (phone, user_id, username, moved_to, came_from) = (
        m.phone.map(str::to_string),
        m.user_id.map(str::to_string),
        m.username.map(str::to_string),
        m.moved_to.map(str::to_string),
        m.came_from.clone(),
    );
    write_with_outcome(
        db,
        Box::new(move |tx| {
            Box::pin(async move {
                on_tx!(tx, |c| {
                    sqlx::query(
                        "INSERT INTO bitrix_inbound (wamid, wa_id, received_at, sent_at, inbox_id, seq, channel, body)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (wamid) DO NOTHING",
                    )
                    .bind(&wamid)
                    .bind(&customer)
                    .bind(now)
                    .bind(place.sent_at)
                    .bind(place.inbox_id)
                    .bind(place.seq)
                    .bind(&channel)
                    .bind(&body)
                    .execute(&mut *c)
                    .await?;
                    sqlx::query(CUSTOMER_SEEN)
                        .bind(&customer)
                        .bind(&name)
                        .bind(message_at_ms)
                        .bind(now)
                        .bind(&phone)
                        .bind(&user_id)
                        .bind(&username)
                        .execute(&mut *c)
                        .await?;
                    if let Some(came_from) = &came_from {
                        sqlx::query("UPDATE bitrix_customers SET came_from = $1 WHERE wa_id = $2 AND came_from IS NULL")
                            .bind(came_from)
                            .bind(&customer)
                            .execute(&mut *c)
                            .await?;
                    }
                    if let Some(new) = &moved_to {
                        sqlx::query("UPDATE bitrix_customers SET phone = $1, updated_at = $2 WHERE wa_id = $3")
                            .bind(new)
                            .bind(now)
                            .bind(&customer)
                            .execute(&mut *c)
                            .await?;
                    }
                    sqlx::query(WINDOW_OPENED)
                        .bind(&channel)
                        .bind(&customer)
                        .bind(message_at_ms)
                        .bind(now)
                        .execute(&mut *c)
                        .await?;
                });
                Ok(())
            })
        }),
    )
    .await?;
    Ok(known.is_none())
}

/// The customer a message belongs to: the one whose chat was opened with this number, or
/// who moved to it, or who has this business-scoped user id; `None` for a new customer. So a
/// customer who changes number or starts hiding it stays in one chat.
pub async fn known_customer(
    db: &Db,
    phone: Option<&str>,
    user_id: Option<&str>,
) -> Result<Option<String>, sqlx::Error> {
    if let Some(phone) = phone {
        let found: Option<String> = on_pool!(db, |p| sqlx::query_scalar(
            "SELECT wa_id FROM bitrix_customers WHERE wa_id = $1 OR phone = $1
             ORDER BY CASE WHEN wa_id = $1 THEN 0 ELSE 1 END LIMIT 1"
        )
        .bind(phone)
        .fetch_optional(p)
        .await)?;
        if found.is_some() {
            return Ok(found);
        }
    }
    if let Some(user_id) = user_id {
        return on_pool!(db, |p| sqlx::query_scalar(
            "SELECT wa_id FROM bitrix_customers WHERE wa_id = $1 OR user_id = $1
             ORDER BY CASE WHEN wa_id = $1 THEN 0 ELSE 1 END LIMIT 1"
        )
        .bind(user_id)
        .fetch_optional(p)
        .await);
    }
    Ok(None)
}

/// Where a reply to a customer goes (protocol §2.5, §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `to`: the customer's current number.
    Phone(String),
    /// `recipient`: the business-scoped user id of a customer who hides their number.
    UserId(String),
}

/// The address of the customer whose chat is `customer`: the number they write from now, else
/// their business-scoped user id; a chat keyed by digits falls back to that number.
pub async fn address_of(db: &Db, customer: &str) -> Result<Address, sqlx::Error> {
    let row: Option<(Option<String>, Option<String>)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT phone, user_id FROM bitrix_customers WHERE wa_id = $1"
    )
    .bind(customer)
    .fetch_optional(p)
    .await)?;
    let (phone, user_id) = row.unwrap_or_default();
    let digits = !customer.is_empty() && customer.bytes().all(|b| b.is_ascii_digit());
    Ok(match (phone, user_id) {
        (Some(phone), _) => Address::Phone(phone),
        _ if digits => Address::Phone(customer.to_string()),
        (None, Some(user_id)) => Address::UserId(user_id),
        (None, None) => Address::UserId(customer.to_string()),
    })
}

/// The customer's username, when they set one.
/// The ad or post the customer first came from, in words, if they came from one.
pub async fn customer_came_from(db: &Db, customer: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT came_from FROM bitrix_customers WHERE wa_id = $1"
    )
    .bind(customer)
    .fetch_optional(p)
    .await)?;
    Ok(row.and_then(|(c,)| c))
}

pub async fn customer_username(db: &Db, customer: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT username FROM bitrix_customers WHERE wa_id = $1"
    )
    .bind(customer)
    .fetch_optional(p)
    .await)?;
    Ok(row.and_then(|(n,)| n))
}

/// Who wrote a quoted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quoted {
    Customer(Option<String>),
    Operator(Option<String>),
}

/// The message a reply or reaction points at, by its wamid: a customer's (its kept text) or an
/// operator's reply (any part of it); `None` when this bridge never saw it.
pub async fn quoted(db: &Db, wamid: &str) -> Result<Option<Quoted>, sqlx::Error> {
    let inbound: Option<(Option<String>,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT body FROM bitrix_inbound WHERE wamid = $1"
    )
    .bind(wamid)
    .fetch_optional(p)
    .await)?;
    if let Some((body,)) = inbound {
        return Ok(Some(Quoted::Customer(body)));
    }
    let Some(row) = outbound_by_wamid(db, wamid).await? else {
        return Ok(None);
    };
    let body: Option<(Option<String>,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT body FROM bitrix_messages WHERE bitrix_message_id = $1"
    )
    .bind(&row.bitrix_message_id)
    .fetch_optional(p)
    .await)?;
    Ok(Some(Quoted::Operator(body.and_then(|(b,)| b))))
}

/// Keeps the text an operator's reply sent, for quoting.
pub async fn set_outbound_body(
    db: &Db,
    bitrix_message_id: &str,
    body: &str,
) -> Result<(), sqlx::Error> {
    let body: String = body.chars().take(BODY_KEPT_CHARS).collect();
    on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_messages SET body = $1 WHERE bitrix_message_id = $2 AND body IS NULL"
    )
    .bind(&body)
    .bind(bitrix_message_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The customer's latest message to `channel`: what a reply marks read.
pub async fn latest_inbound(
    db: &Db,
    channel: &str,
    customer: &str,
) -> Result<Option<String>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_scalar(
        "SELECT wamid FROM bitrix_inbound
         WHERE channel = $1 AND wa_id = $2 AND sent_at IS NOT NULL
         ORDER BY sent_at DESC, inbox_id DESC, seq DESC LIMIT 1"
    )
    .bind(channel)
    .bind(customer)
    .fetch_optional(p)
    .await)
}

/// The customer's latest messages to `channel` with the text kept of each, newest first: what
/// an operator's quote is matched against.
pub async fn recent_bodies(
    db: &Db,
    channel: &str,
    customer: &str,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_as(
        "SELECT wamid, body FROM bitrix_inbound
         WHERE channel = $1 AND wa_id = $2 AND sent_at IS NOT NULL AND body IS NOT NULL
         ORDER BY sent_at DESC, inbox_id DESC, seq DESC LIMIT $3"
    )
    .bind(channel)
    .bind(customer)
    .bind(limit)
    .fetch_all(p)
    .await)
}

/// Raises (or restates) an alert about the connector, written with the outcome of the event
/// that reported it.
pub async fn raise_alert(db: &Db, name: &str, reason: &str) -> Result<(), sqlx::Error> {
    let (name, reason, now) = (name.to_string(), reason.to_string(), now_ms());
    write_with_outcome(
        db,
        Box::new(move |tx| {
            Box::pin(async move {
                on_tx!(tx, |c| {
                    sqlx::query(
                        "INSERT INTO bitrix_alerts (name, reason, raised_at) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET reason = excluded.reason, raised_at = excluded.raised_at",
                    )
                    .bind(&name)
                    .bind(&reason)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                });
                Ok(())
            })
        }),
    )
    .await
}

/// The alerts standing, oldest first: (name, reason).
pub async fn alerts(db: &Db) -> Result<Vec<(String, String)>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_as(
        "SELECT name, reason FROM bitrix_alerts ORDER BY raised_at, name"
    )
    .fetch_all(p)
    .await)
}

/// Clears the alert `name`: what it reported is over (the connector was activated again).
pub async fn clear_alerts(db: &Db, name: &str) -> Result<u64, sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "DELETE FROM bitrix_alerts WHERE name = $1"
    )
    .bind(name)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}

/// The place of an inbound message; `None` for one stored before places were recorded.
pub async fn place_of(db: &Db, wamid: &str) -> Result<Option<Place>, sqlx::Error> {
    let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT sent_at, inbox_id, CAST(seq AS BIGINT) FROM bitrix_inbound WHERE wamid = $1"
    )
    .bind(wamid)
    .fetch_optional(p)
    .await)?;
    Ok(match row {
        Some((Some(sent_at), Some(inbox_id), Some(seq))) => Some(Place {
            sent_at,
            inbox_id,
            seq,
        }),
        _ => None,
    })
}

/// The customer's messages to `channel` before `place` not yet in Bitrix (whether or not
/// anything still tries to put them there). Each channel is its own chat, with its own order.
pub async fn unrelayed_before(
    db: &Db,
    channel: &str,
    customer: &str,
    place: Place,
) -> Result<Vec<String>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_scalar(
        "SELECT wamid FROM bitrix_inbound
         WHERE channel = $5 AND wa_id = $1 AND relayed_at IS NULL
           AND (sent_at, inbox_id, seq) < ($2, $3, $4)"
    )
    .bind(customer)
    .bind(place.sent_at)
    .bind(place.inbox_id)
    .bind(place.seq)
    .bind(channel)
    .fetch_all(p)
    .await)
}

/// The customer's first message to `channel` after `place` not yet in Bitrix.
pub async fn next_unrelayed_after(
    db: &Db,
    channel: &str,
    customer: &str,
    place: Place,
) -> Result<Option<String>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_scalar(
        "SELECT wamid FROM bitrix_inbound
         WHERE channel = $5 AND wa_id = $1 AND relayed_at IS NULL
           AND (sent_at, inbox_id, seq) > ($2, $3, $4)
         ORDER BY sent_at, inbox_id, seq LIMIT 1"
    )
    .bind(customer)
    .bind(place.sent_at)
    .bind(place.inbox_id)
    .bind(place.seq)
    .bind(channel)
    .fetch_optional(p)
    .await)
}

/// Whether the inbound message is in Bitrix already, and its place (`None` for one stored
/// before places were recorded): one read for what a relay asks first.
pub async fn relay_state(db: &Db, wamid: &str) -> Result<(bool, Option<Place>), sqlx::Error> {
    type Row = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
    let row: Option<Row> = on_pool!(db, |p| {
        sqlx::query_as(
        "SELECT relayed_at, sent_at, inbox_id, CAST(seq AS BIGINT) FROM bitrix_inbound WHERE wamid = $1"
    )
    .bind(wamid)
    .fetch_optional(p)
    .await
    })?;
    Ok(match row {
        Some((relayed, Some(sent_at), Some(inbox_id), Some(seq))) => (
            relayed.is_some(),
            Some(Place {
                sent_at,
                inbox_id,
                seq,
            }),
        ),
        Some((relayed, ..)) => (relayed.is_some(), None),
        None => (false, None),
    })
}

pub async fn mark_relayed(db: &Db, wamid: &str, chat_id: Option<&str>) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_inbound SET relayed_at = $1, bitrix_chat_id = $2 WHERE wamid = $3"
    )
    .bind(now_ms())
    .bind(chat_id)
    .bind(wamid)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Remembers the customer (the name is shared by every channel) and moves the 24-hour window
/// forward only: a late redelivery of an old message must not shrink it.
/// The number replies go to is set once (a number change moves it explicitly), so a late
/// redelivery from the old number does not move it back.
const CUSTOMER_SEEN: &str = "INSERT INTO bitrix_customers (wa_id, name, last_inbound_at, updated_at, phone, user_id, username)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (wa_id) DO UPDATE SET
       name = COALESCE(excluded.name, bitrix_customers.name),
       phone = COALESCE(bitrix_customers.phone, excluded.phone),
       user_id = COALESCE(excluded.user_id, bitrix_customers.user_id),
       username = COALESCE(excluded.username, bitrix_customers.username),
       last_inbound_at = CASE WHEN excluded.last_inbound_at > bitrix_customers.last_inbound_at
                              THEN excluded.last_inbound_at ELSE bitrix_customers.last_inbound_at END,
       updated_at = excluded.updated_at";

/// The window of (channel, customer), moved forward only.
const WINDOW_OPENED: &str = "INSERT INTO bitrix_windows (channel, wa_id, last_inbound_at, updated_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (channel, wa_id) DO UPDATE SET
       last_inbound_at = CASE WHEN excluded.last_inbound_at > bitrix_windows.last_inbound_at
                              THEN excluded.last_inbound_at ELSE bitrix_windows.last_inbound_at END,
       updated_at = excluded.updated_at";

/// When the customer last wrote to any of the numbers (Unix ms of the message timestamp).
pub async fn last_inbound_at(db: &Db, customer: &str) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT last_inbound_at FROM bitrix_customers WHERE wa_id = $1"
    )
    .bind(customer)
    .fetch_optional(p)
    .await)?;
    Ok(row.map(|(t,)| t))
}

/// When the customer last wrote to `channel`'s number (Unix ms of the message timestamp), for
/// the 24-hour guard: a message to another number opens no window on this one.
pub async fn last_inbound_to(
    db: &Db,
    channel: &str,
    customer: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT last_inbound_at FROM bitrix_windows WHERE channel = $1 AND wa_id = $2"
    )
    .bind(channel)
    .bind(customer)
    .fetch_optional(p)
    .await)?;
    Ok(row.map(|(t,)| t))
}

/// The customer's WhatsApp profile name, if one was seen.
pub async fn customer_name(db: &Db, customer: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT name FROM bitrix_customers WHERE wa_id = $1"
    )
    .bind(customer)
    .fetch_optional(p)
    .await)?;
    Ok(row.and_then(|(n,)| n))
}

/// First sight of this (wamid, status) pair?
pub async fn record_status(db: &Db, wamid: &str, status: &str) -> Result<bool, sqlx::Error> {
    let n = on_pool!(db, |p| sqlx::query(
        "INSERT INTO bitrix_statuses (wamid, status, received_at) VALUES ($1, $2, $3)
         ON CONFLICT (wamid, status) DO NOTHING"
    )
    .bind(wamid)
    .bind(status)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Who may create the lead for a phone number.
#[derive(Debug, PartialEq, Eq)]
pub enum LeadClaim {
    /// This caller holds the claim and must create (or find) the lead, then `finish_lead`.
    Mine,
    /// The lead exists already.
    Done(String),
    /// Another worker holds a live claim and is creating it.
    Busy,
}

/// A claim older than this belongs to a worker that died mid-way; it may be taken over. Lead
/// creation is three REST calls (seconds at worst); well inside the retry schedule (10 + 30 +
/// 60 s), so the job of a dead claimer's message creates the lead on a later attempt.
const STALE_CLAIM_MS: i64 = 60 * 1000;

pub async fn claim_lead(db: &Db, phone: &str) -> Result<LeadClaim, sqlx::Error> {
    // Nearly every message is from a customer whose lead exists: a read answers it, without
    // taking the write lock that the acks of new messages wait for.
    let lead: Option<Option<String>> = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT lead_id FROM bitrix_leads WHERE phone = $1"
    )
    .bind(phone)
    .fetch_optional(p)
    .await)?;
    if let Some(Some(id)) = lead {
        return Ok(LeadClaim::Done(id));
    }
    let now = now_ms();
    let n = on_pool!(db, |p| {
        sqlx::query(
        "INSERT INTO bitrix_leads (phone, claimed_at) VALUES ($1, $2) ON CONFLICT (phone) DO NOTHING"
    )
    .bind(phone)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })?;
    if n == 1 {
        return Ok(LeadClaim::Mine);
    }
    let row: Option<(Option<String>, i64)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT lead_id, claimed_at FROM bitrix_leads WHERE phone = $1"
    )
    .bind(phone)
    .fetch_optional(p)
    .await)?;
    match row {
        Some((Some(id), _)) => Ok(LeadClaim::Done(id)),
        Some((None, at)) if at < now - STALE_CLAIM_MS => {
            let taken = on_pool!(db, |p| sqlx::query(
                "UPDATE bitrix_leads SET claimed_at = $1
                 WHERE phone = $2 AND lead_id IS NULL AND claimed_at = $3"
            )
            .bind(now)
            .bind(phone)
            .bind(at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
            Ok(if taken == 1 {
                LeadClaim::Mine
            } else {
                LeadClaim::Busy
            })
        }
        Some((None, _)) => Ok(LeadClaim::Busy),
        // Released between our insert and select: try again next attempt.
        None => Ok(LeadClaim::Busy),
    }
}

pub async fn finish_lead(db: &Db, phone: &str, lead_id: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_leads SET lead_id = $1, created_at = $2 WHERE phone = $3"
    )
    .bind(lead_id)
    .bind(now_ms())
    .bind(phone)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Gives the claim back after a failure so the retry (or another worker) can take it.
pub async fn release_lead(db: &Db, phone: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "DELETE FROM bitrix_leads WHERE phone = $1 AND lead_id IS NULL"
    )
    .bind(phone)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// An operator message relayed to WhatsApp.
#[derive(Debug, Clone)]
pub struct OutboundRow {
    pub bitrix_message_id: String,
    pub bitrix_chat_id: String,
    pub wa_id: String,
    pub wamid: Option<String>,
    pub state: String,
}

/// The operator message a wamid belongs to: any part of a multi-part reply leads to it.
pub async fn outbound_by_wamid(db: &Db, wamid: &str) -> Result<Option<OutboundRow>, sqlx::Error> {
    let owner: Option<(String,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT bitrix_message_id FROM bitrix_message_parts WHERE wamid = $1"
    )
    .bind(wamid)
    .fetch_optional(p)
    .await)?;
    match owner {
        Some((id,)) => outbound_by_message(db, &id).await,
        None => outbound_where(db, "wamid", wamid).await,
    }
}

/// Parts of an operator message Meta already accepted, as (part, wamid) in part order.
pub async fn sent_parts(
    db: &Db,
    bitrix_message_id: &str,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_as(
        "SELECT part, wamid FROM bitrix_message_parts WHERE bitrix_message_id = $1 ORDER BY part"
    )
    .bind(bitrix_message_id)
    .fetch_all(p)
    .await)
}

/// Records a part Meta accepted: by the send job right after Meta's answer, or by a status
/// webhook that overtook it (its callback data names the part). Both write the same row;
/// the first wins. Only a crash before either can make a retry send the part again.
pub async fn record_part(
    db: &Db,
    bitrix_message_id: &str,
    part: i64,
    wamid: &str,
) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO bitrix_message_parts (bitrix_message_id, part, wamid, sent_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
    )
    .bind(bitrix_message_id)
    .bind(part)
    .bind(wamid)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Every wamid of an operator message, in part order: what Bitrix gets as `message.id`.
/// Rows written before parts were recorded have only their one `wamid`.
pub async fn wamids_of(db: &Db, row: &OutboundRow) -> Result<Vec<String>, sqlx::Error> {
    let parts = sent_parts(db, &row.bitrix_message_id).await?;
    Ok(if parts.is_empty() {
        row.wamid.iter().cloned().collect()
    } else {
        parts.into_iter().map(|(_, w)| w).collect()
    })
}

pub async fn outbound_by_message(
    db: &Db,
    bitrix_message_id: &str,
) -> Result<Option<OutboundRow>, sqlx::Error> {
    outbound_where(db, "bitrix_message_id", bitrix_message_id).await
}

async fn outbound_where(
    db: &Db,
    column: &'static str,
    value: &str,
) -> Result<Option<OutboundRow>, sqlx::Error> {
    let sql = format!(
        "SELECT bitrix_message_id, bitrix_chat_id, wa_id, wamid, state FROM bitrix_messages WHERE {column} = $1"
    );
    let row: Option<(String, String, String, Option<String>, String)> =
        on_pool!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(value)
            .fetch_optional(p)
            .await)?;
    Ok(row.map(
        |(bitrix_message_id, bitrix_chat_id, wa_id, wamid, state)| OutboundRow {
            bitrix_message_id,
            bitrix_chat_id,
            wa_id,
            wamid,
            state,
        },
    ))
}

/// First sight of an operator message? The row is the outbound dedupe key.
pub async fn record_outbound(
    db: &Db,
    bitrix_message_id: &str,
    bitrix_chat_id: &str,
    wa_id: &str,
) -> Result<bool, sqlx::Error> {
    record_outbound_from(db, bitrix_message_id, bitrix_chat_id, wa_id, "").await
}

/// [`record_outbound`] of a reply that goes out from `channel`'s number (empty when its line
/// has none), which the traffic on `/` counts it under.
pub async fn record_outbound_from(
    db: &Db,
    bitrix_message_id: &str,
    bitrix_chat_id: &str,
    wa_id: &str,
    channel: &str,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let n = on_pool!(db, |p| {
        sqlx::query(
        "INSERT INTO bitrix_messages (bitrix_message_id, bitrix_chat_id, wa_id, state, created_at, updated_at, channel)
         VALUES ($1, $2, $3, 'received', $4, $4, $5) ON CONFLICT (bitrix_message_id) DO NOTHING"
    )
    .bind(bitrix_message_id)
    .bind(bitrix_chat_id)
    .bind(wa_id)
    .bind(now)
    .bind(channel)
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(n == 1)
}

/// The Bitrix24 chat of an outbound message recorded before its chat existed (a template
/// sent first, whose conversation opens after Meta accepted it).
pub async fn set_outbound_chat(
    db: &Db,
    bitrix_message_id: &str,
    bitrix_chat_id: &str,
) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| {
        sqlx::query(
        "UPDATE bitrix_messages SET bitrix_chat_id = $1, updated_at = $2 WHERE bitrix_message_id = $3"
    )
    .bind(bitrix_chat_id)
    .bind(now_ms())
    .bind(bitrix_message_id)
    .execute(p)
    .await
    .map(drop)
    })
}

/// Marks a template sent first `failed` with `note` while its conversation is not open yet;
/// `false` once it is (then the note goes to its chat as for any reply). One statement, so a
/// conversation opening at the same time either sees the failure or is seen by it.
pub async fn fail_unopened(
    db: &Db,
    bitrix_message_id: &str,
    note: &str,
) -> Result<bool, sqlx::Error> {
    let n = on_pool!(db, |p| sqlx::query(
        "UPDATE bitrix_messages SET state = 'failed', error = $1, updated_at = $2
         WHERE bitrix_message_id = $3 AND bitrix_chat_id = ''
           AND state NOT IN ('failed', 'blocked_window')"
    )
    .bind(note)
    .bind(now_ms())
    .bind(bitrix_message_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Why an outbound message failed, as recorded.
pub async fn outbound_error(
    db: &Db,
    bitrix_message_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> = on_pool!(db, |p| sqlx::query_as(
        "SELECT error FROM bitrix_messages WHERE bitrix_message_id = $1"
    )
    .bind(bitrix_message_id)
    .fetch_optional(p)
    .await)?;
    Ok(row.and_then(|(e,)| e))
}

/// Moves an operator message to `state`. A refusal (`failed`, `blocked_window`) sticks: Meta's
/// `failed` status can overtake the send job, whose later `sent`/`delivered` must not erase it.
pub async fn set_outbound(
    db: &Db,
    bitrix_message_id: &str,
    state: &str,
    wamid: Option<&str>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    on_pool!(db, |p| {
        sqlx::query(
        "UPDATE bitrix_messages SET state = $1, wamid = COALESCE($2, wamid), error = $3, updated_at = $4
         WHERE bitrix_message_id = $5
           AND NOT (state IN ('failed', 'blocked_window') AND $1 IN ('sent', 'delivered', 'read'))"
    )
    .bind(state)
    .bind(wamid)
    .bind(error)
    .bind(now_ms())
    .bind(bitrix_message_id)
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Per channel (number): customer messages received and operator replies taken since `since_ms`.
pub async fn traffic_since(
    db: &Db,
    since_ms: i64,
) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), sqlx::Error> {
    let inbound = on_pool!(db, |p| sqlx::query_as(
        "SELECT channel, CAST(COUNT(*) AS BIGINT) FROM bitrix_inbound
         WHERE received_at > $1 GROUP BY channel"
    )
    .bind(since_ms)
    .fetch_all(p)
    .await)?;
    let outbound = on_pool!(db, |p| sqlx::query_as(
        "SELECT channel, CAST(COUNT(*) AS BIGINT) FROM bitrix_messages
         WHERE created_at > $1 GROUP BY channel"
    )
    .bind(since_ms)
    .fetch_all(p)
    .await)?;
    Ok((inbound, outbound))
}
