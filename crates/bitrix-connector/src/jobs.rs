//! The work behind the routes. A stored Meta POST is split by [`process_meta_event`] into one
//! job per message and per status, each pushed once under its own key, so one failing message
//! retries alone and a redelivered or replayed wamid never doubles. Jobs are plain structs;
//! handlers take the shared [`Relay`] state.
//!
//! Order: a customer's messages reach Bitrix in the order Meta sent them — by Meta's timestamp,
//! then the order they arrived in (inbox row, place in the notification) — whatever the number
//! of workers or processes. A relay job sends only when its message is next: every earlier
//! notification that mentions the customer has been split into jobs, and every earlier
//! message of the customer is in Bitrix or has nothing left to try (its job finished without
//! sending, or is a dead letter). Otherwise the job is postponed (not sleeping in a worker
//! slot, and not spending an attempt), and the message before it wakes it when done. So a
//! message whose relay keeps failing holds the customer's later ones through its retries,
//! until it is sent or dead-lettered; `jobs retry` of a dead letter then delivers it late.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_core::{
    Core, JobContext, JobError, JobKind, inbox::StoredEvent, processing::Outcome,
};

use crate::{
    bitrix::{Bitrix, BitrixError, id_text, truthy},
    inbound::{self, split_name},
    media::{self, Media},
    meta::MetaClient,
    meta_payload::{self, InboundUnit, StatusUnit},
    setting_values::public_link,
    store::{self, LeadClaim},
};

/// A customer message to put into the Open Channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayToBitrix {
    pub unit: InboundUnit,
}

impl JobKind for RelayToBitrix {
    const KIND: &'static str = "bitrix-connector.relay-to-bitrix";
}

/// A Meta status of an operator's message, to report to Bitrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayStatusToBitrix {
    pub unit: StatusUnit,
}

impl JobKind for RelayStatusToBitrix {
    const KIND: &'static str = "bitrix-connector.relay-status-to-bitrix";
}

/// What every handler needs: the core and one Bitrix client per process (its refresh lock and
/// rate bucket must be shared by all jobs to mean anything).
#[derive(Clone)]
pub struct Relay {
    pub core: Core,
    pub bitrix: Bitrix,
}

fn db_retry(e: sqlx::Error) -> JobError {
    JobError::Retry(format!("database: {e}"))
}

fn bitrix_job_error(e: BitrixError) -> JobError {
    e.into_job_error()
}

/// Processor of source `meta`: records each unit and pushes its job.
pub async fn process_meta_event(
    relay: &Relay,
    event: StoredEvent,
    _ctx: JobContext,
) -> Result<Outcome, JobError> {
    let db = &relay.core.db;
    let envelope = meta_payload::parse(&event.body).map_err(JobError::Permanent)?;
    let units = meta_payload::units(&envelope);
    for e in &units.errors {
        tracing::warn!(error = %e, "Meta reported an error not tied to a message");
    }
    let total = units.messages.len() + units.statuses.len();
    let mut fresh = 0;
    for (seq, unit) in units.messages.into_iter().enumerate() {
        let place = store::Place {
            sent_at: unit.timestamp,
            inbox_id: event.id,
            seq: seq as i64,
        };
        if store::record_inbound(db, &unit.wamid, &unit.customer, place)
            .await
            .map_err(db_retry)?
        {
            fresh += 1;
        }
        store::record_customer(
            db,
            &unit.customer,
            unit.name.as_deref(),
            unit.timestamp * 1000,
        )
        .await
        .map_err(db_retry)?;
        // Pushed even when the wamid was known: the key makes it a no-op, and it covers a crash
        // between recording the unit and pushing its job.
        let key = relay_key(&unit.wamid);
        relay
            .core
            .jobs
            .push_once(&RelayToBitrix { unit }, &event.request_id, &key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
    }
    for unit in units.statuses {
        if store::record_status(db, &unit.wamid, &unit.status)
            .await
            .map_err(db_retry)?
        {
            fresh += 1;
        }
        let key = format!("status:{}:{}", unit.wamid, unit.status);
        relay
            .core
            .jobs
            .push_once(&RelayStatusToBitrix { unit }, &event.request_id, &key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
    }
    Ok(match (total, fresh) {
        (0, _) => Outcome::Skipped("no messages or statuses in this notification".into()),
        (_, 0) => Outcome::Skipped("duplicate: every message and status was seen before".into()),
        _ => Outcome::Processed,
    })
}

/// The idempotency key of a message's relay job.
fn relay_key(wamid: &str) -> String {
    format!("relay:{wamid}")
}

/// How soon a message that is not next looks again. An earlier notification of the customer
/// still being split is a matter of milliseconds; an earlier message being sent or retried
/// wakes the later one itself when done, so that wait is only the safety net.
const TURN_SPLITTING: std::time::Duration = std::time::Duration::from_secs(1);
const TURN_SENDING: std::time::Duration = std::time::Duration::from_secs(30);

/// `None`: the message is next in its customer's order; otherwise how long to wait.
async fn wait_for_turn(
    relay: &Relay,
    unit: &InboundUnit,
) -> Result<Option<std::time::Duration>, JobError> {
    let db = &relay.core.db;
    let Some(place) = store::place_of(db, &unit.wamid).await.map_err(db_retry)? else {
        return Ok(None);
    };
    let jobs = &relay.core.jobs;
    let queue = |e: switchboard_core::jobs::QueueError| JobError::Retry(e.to_string());
    // The customer's id as a JSON string: notifications that carry it (rarely one that only
    // mentions it) hold this message back until they are split.
    let mention = serde_json::to_string(&unit.customer).unwrap_or_default();
    if jobs
        .inbox_work_before("meta", place.inbox_id, &mention)
        .await
        .map_err(queue)?
    {
        return Ok(Some(TURN_SPLITTING));
    }
    let earlier: Vec<String> = store::unrelayed_before(db, &unit.customer, place)
        .await
        .map_err(db_retry)?
        .iter()
        .map(|w| relay_key(w))
        .collect();
    if jobs.any_live(&earlier).await.map_err(queue)? {
        return Ok(Some(TURN_SENDING));
    }
    Ok(None)
}

/// This message is done with (sent, or nothing more will be tried): the customer's next one
/// may go now rather than at its next look.
async fn wake_next(relay: &Relay, unit: &InboundUnit) {
    let db = &relay.core.db;
    let next = match store::place_of(db, &unit.wamid).await {
        Ok(Some(place)) => store::next_unrelayed_after(db, &unit.customer, place).await,
        Ok(None) => return,
        Err(e) => Err(e),
    };
    let woken = match next {
        Ok(Some(wamid)) => relay.core.jobs.make_due_by_key(&relay_key(&wamid)).await,
        Ok(None) => return,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = woken {
        // It looks again by itself a little later.
        tracing::debug!(error = %e, "could not wake the customer's next message");
    }
}

pub async fn relay_to_bitrix(
    relay: &Relay,
    job: RelayToBitrix,
    ctx: JobContext,
) -> Result<(), JobError> {
    let unit = job.unit;
    let result = relay_in_turn(relay, &unit, &ctx).await;
    let settled = match &result {
        Ok(Relayed::Postponed) => false,
        // Woken when it was sent, before the lead.
        Ok(Relayed::Sent) => false,
        Ok(Relayed::Nothing) | Err(JobError::Permanent(_)) => true,
        Err(JobError::Retry(_)) => ctx.attempt >= switchboard_core::jobs::MAX_ATTEMPTS,
    };
    if settled {
        wake_next(relay, &unit).await;
    }
    result.map(drop)
}

enum Relayed {
    Sent,
    /// Nothing to send (nothing to show, or sent before).
    Nothing,
    /// Not this message's turn yet: its job runs again later.
    Postponed,
}

async fn relay_in_turn(
    relay: &Relay,
    unit: &InboundUnit,
    ctx: &JobContext,
) -> Result<Relayed, JobError> {
    let Some(rendered) = inbound::render(&unit.message) else {
        tracing::info!(wamid = %unit.wamid, "nothing to show an operator; not relayed");
        return Ok(Relayed::Nothing);
    };
    let db = &relay.core.db;
    let (connector, line) = relay
        .bitrix
        .connector_and_line()
        .await
        .map_err(bitrix_job_error)?;
    let mut relayed = Relayed::Nothing;
    if !store::is_relayed(db, &unit.wamid).await.map_err(db_retry)? {
        if let Some(wait) = wait_for_turn(relay, unit).await? {
            let queue = |e: switchboard_core::jobs::QueueError| JobError::Retry(e.to_string());
            relay
                .core
                .jobs
                .postpone(&ctx.task_id, wait)
                .await
                .map_err(queue)?;
            // The message before may have finished between the look and the postponing, and
            // found no waiting job to wake: look once more now that it would find one.
            if wait_for_turn(relay, unit).await?.is_none() {
                relay
                    .core
                    .jobs
                    .make_due_by_key(&relay_key(&unit.wamid))
                    .await
                    .map_err(queue)?;
            }
            tracing::debug!(wamid = %unit.wamid, wait_secs = wait.as_secs(), "an earlier message of this customer goes first");
            return Ok(Relayed::Postponed);
        }
        let mut files = Vec::new();
        if let Some(m) = &rendered.media {
            let meta = MetaClient::from_settings(&relay.core)
                .await
                .map_err(|e| JobError::Permanent(e.to_string()))?;
            let (bytes, mime) = meta
                .download_media(&m.media_id)
                .await
                .map_err(|e| e.into_job_error())?;
            let copy = Media {
                mime,
                filename: m.filename.clone(),
                bytes,
            };
            let id = media::put(db, &format!("meta:{}", m.media_id), &copy)
                .await
                .map_err(db_retry)?;
            files.push(json!({"url": public_link(&relay.core, &format!("/media/{id}")), "name": m.filename}));
        }
        let item = bitrix_message(unit, rendered.text.as_deref(), files);
        let result = relay
            .bitrix
            .call(
                "imconnector.send.messages",
                json!({"CONNECTOR": connector, "LINE": line, "MESSAGES": [item]}),
            )
            .await
            .map_err(bitrix_job_error)?;
        let first = result.pointer("/DATA/RESULT/0");
        if !truthy(result.get("SUCCESS")) || !truthy(first.and_then(|r| r.get("SUCCESS"))) {
            let errors = first
                .and_then(|r| r.get("ERRORS"))
                .cloned()
                .unwrap_or(Value::Null);
            return Err(item_failure(&errors));
        }
        let chat_id = id_text(first.and_then(|r| r.pointer("/session/CHAT_ID")));
        store::mark_relayed(db, &unit.wamid, chat_id.as_deref())
            .await
            .map_err(db_retry)?;
        metrics::counter!("switchboard_bitrix_relayed_total", "direction" => "inbound")
            .increment(1);
        wake_next(relay, unit).await;
        relayed = Relayed::Sent;
    }
    ensure_lead(relay, unit, &line, rendered.text.as_deref())
        .await
        .map_err(bitrix_job_error)?;
    Ok(relayed)
}

/// The `MESSAGES[]` item of protocol §4.1.
fn bitrix_message(unit: &InboundUnit, text: Option<&str>, files: Vec<Value>) -> Value {
    let (first, last) = split_name(unit.name.as_deref());
    let mut user = json!({"id": unit.customer, "skip_phone_validate": "Y"});
    if !first.is_empty() {
        user["name"] = json!(first);
    }
    if !last.is_empty() {
        user["last_name"] = json!(last);
    }
    if let Some(phone) = phone_of(&unit.customer) {
        user["phone"] = json!(phone);
    }
    let mut message = json!({"id": unit.wamid, "date": unit.timestamp});
    if let Some(t) = text {
        message["text"] = json!(t);
    }
    if !files.is_empty() {
        message["files"] = json!(files);
    }
    let mut chat = json!({"id": unit.customer});
    if let Some(n) = &unit.name {
        chat["name"] = json!(n);
    }
    if phone_of(&unit.customer).is_some() {
        chat["url"] = json!(format!("https://wa.me/{}", unit.customer));
    }
    json!({"user": user, "message": message, "chat": chat})
}

/// `+<digits>` for a wa_id; `None` for a business-scoped user id, which is no phone number.
fn phone_of(customer: &str) -> Option<String> {
    (!customer.is_empty() && customer.chars().all(|c| c.is_ascii_digit()))
        .then(|| format!("+{customer}"))
}

fn item_failure(errors: &Value) -> JobError {
    let codes: Vec<String> = errors
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    format!(
                        "{} ({})",
                        e.get("code").and_then(Value::as_str).unwrap_or("?"),
                        e.get("message").and_then(Value::as_str).unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let text = format!("Bitrix24 refused the message: {}", codes.join("; "));
    if codes.iter().any(|c| c.starts_with("NOT_ACTIVE_LINE")) {
        JobError::Permanent(format!("{text}. {}", crate::error::fix::NOT_ACTIVE_LINE))
    } else {
        JobError::Permanent(text)
    }
}

/// One CRM lead per new number (protocol §7): the phone's row is claimed first, so concurrent
/// first messages, replays and other processes can't create a second; the portal is searched
/// before creating, so a lead whose creation answer was lost is found instead of repeated.
/// How long (in 100 ms steps) a relay waits for another job's lead creation before retrying.
const LEAD_WAIT_STEPS: u32 = 50;

async fn ensure_lead(
    relay: &Relay,
    unit: &InboundUnit,
    line: &str,
    first_text: Option<&str>,
) -> Result<(), BitrixError> {
    let Some(phone) = phone_of(&unit.customer) else {
        return Ok(());
    };
    let db = &relay.core.db;
    let storage = |e: sqlx::Error| BitrixError::Storage(e.to_string());
    // Another job may be creating this customer's lead right now (several first messages at
    // once): that takes a few REST calls, so wait for it briefly rather than spend a retry.
    // A claim that stays busy belongs to a job that died mid-way; retrying (the message itself
    // is already relayed and won't be resent) finds it stale and takes it over.
    let mut waited = 0;
    loop {
        match store::claim_lead(db, &phone).await.map_err(storage)? {
            LeadClaim::Mine => break,
            LeadClaim::Done(_) => return Ok(()),
            LeadClaim::Busy if waited < LEAD_WAIT_STEPS => {
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            LeadClaim::Busy => {
                return Err(BitrixError::Storage(format!(
                    "lead for {phone} is being created by another job; checking again"
                )));
            }
        }
    }
    match find_or_create_lead(relay, unit, &phone, line, first_text).await {
        Ok(id) => store::finish_lead(db, &phone, &id).await.map_err(storage),
        Err(e) => {
            store::release_lead(db, &phone).await.map_err(storage)?;
            Err(e)
        }
    }
}

async fn find_or_create_lead(
    relay: &Relay,
    unit: &InboundUnit,
    phone: &str,
    line: &str,
    first_text: Option<&str>,
) -> Result<String, BitrixError> {
    let b = &relay.bitrix;
    // A line set to create leads itself would give the customer a second one.
    match b
        .call("imopenlines.config.get", json!({"CONFIG_ID": line}))
        .await
    {
        Ok(cfg) if truthy(cfg.get("CRM")) && cfg.get("CRM_CREATE") == Some(&json!("lead")) => {
            return Ok("by-openlines".into());
        }
        Ok(_) => {}
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => tracing::warn!(error = %e, "could not read the Open Channel's CRM settings"),
    }
    let found = b
        .call(
            "crm.duplicate.findbycomm",
            json!({"type": "PHONE", "values": [phone, unit.customer], "entity_type": "LEAD"}),
        )
        .await?;
    if let Some(id) = id_text(found.pointer("/LEAD/0")) {
        return Ok(id);
    }
    let (first, last) = split_name(unit.name.as_deref());
    let title = unit.name.clone().unwrap_or_else(|| phone.to_string());
    let mut fields = json!({
        "TITLE": format!("WhatsApp: {title}"),
        "PHONE": [{"VALUE": phone, "VALUE_TYPE": "MOBILE"}],
        "IM": [{"VALUE": unit.customer, "VALUE_TYPE": "OTHER"}],
        "SOURCE_ID": "OTHER",
        "SOURCE_DESCRIPTION": "WhatsApp Cloud API",
        "STATUS_ID": "NEW",
        "OPENED": "Y",
    });
    if !first.is_empty() {
        fields["NAME"] = json!(first);
    }
    if !last.is_empty() {
        fields["LAST_NAME"] = json!(last);
    }
    if let Some(t) = first_text {
        fields["COMMENTS"] = json!(format!("First message: {t}"));
    }
    let id = b
        .call(
            "crm.lead.add",
            json!({"fields": fields, "params": {"REGISTER_SONET_EVENT": "Y"}}),
        )
        .await?;
    let id = id_text(Some(&id)).unwrap_or_default();
    tracing::info!(lead_id = %id, "CRM lead created for a new WhatsApp customer");
    Ok(id)
}

pub async fn relay_status_to_bitrix(
    relay: &Relay,
    job: RelayStatusToBitrix,
    _ctx: JobContext,
) -> Result<(), JobError> {
    let unit = job.unit;
    let db = &relay.core.db;
    let mut found = store::outbound_by_wamid(db, &unit.wamid)
        .await
        .map_err(db_retry)?;
    if found.is_none()
        && let Some((message_id, part)) = unit
            .callback_data
            .as_deref()
            .and_then(crate::reply::parse_callback_data)
    {
        // Meta's status overtook the send job's record of this part: record it from here.
        if store::outbound_by_message(db, message_id)
            .await
            .map_err(db_retry)?
            .is_some()
        {
            store::record_part(db, message_id, part, &unit.wamid)
                .await
                .map_err(db_retry)?;
            found = store::outbound_by_wamid(db, &unit.wamid)
                .await
                .map_err(db_retry)?;
        }
    }
    let Some(row) = found else {
        // Not a message this bridge sent for an operator (or sent before the map existed).
        return Ok(());
    };
    if row.state == "received" && unit.status != "failed" {
        // The reply's send job is still at work (a later part pending or retrying): it
        // confirms delivery with every part's wamid when done, and `read` changes nothing in
        // Bitrix (protocol §5.2). Reporting now would mark it delivered with a partial id list.
        return Ok(());
    }
    let (connector, line) = relay
        .bitrix
        .connector_and_line()
        .await
        .map_err(bitrix_job_error)?;
    // All of the message's wamids, not just this part's: Bitrix replaces the message's
    // CONNECTOR_MID with what it is given.
    let wamids = store::wamids_of(db, &row).await.map_err(db_retry)?;
    let item = |with_date: bool| {
        let mut message = json!({"id": wamids});
        if with_date {
            message["date"] = json!(crate::bitrix::oauth::now_secs());
        }
        json!({
            "im": {"chat_id": row.bitrix_chat_id, "message_id": row.bitrix_message_id},
            "message": message,
            "chat": {"id": row.wa_id},
        })
    };
    let call = |method: &'static str, with_date: bool| {
        let params = json!({"CONNECTOR": connector, "LINE": line, "MESSAGES": [item(with_date)]});
        async move { relay.bitrix.call(method, params).await }
    };
    match unit.status.as_str() {
        "delivered" => {
            call("imconnector.send.status.delivery", true)
                .await
                .map_err(bitrix_job_error)?;
        }
        "read" => {
            // `read` may arrive without `delivered` (protocol §2.4); delivery also clears
            // "sending", so confirm it first when it is still outstanding.
            if row.state != "delivered" && row.state != "read" {
                call("imconnector.send.status.delivery", true)
                    .await
                    .map_err(bitrix_job_error)?;
            }
            call("imconnector.send.status.reading", false)
                .await
                .map_err(bitrix_job_error)?;
        }
        "failed" => {
            let code = unit
                .errors
                .first()
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64);
            crate::outbound::report_failed_status(relay, &row, code, &unit.errors).await?;
            return Ok(());
        }
        _ => return Ok(()),
    }
    if row.state != "failed" && row.state != "blocked_window" {
        let state = if unit.status == "read" {
            "read"
        } else {
            "delivered"
        };
        store::set_outbound(db, &row.bitrix_message_id, state, None, None)
            .await
            .map_err(db_retry)?;
    }
    Ok(())
}
