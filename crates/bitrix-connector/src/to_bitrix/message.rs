//! The relay job of one customer message: in its turn, its media re-hosted, put into the Open
//! Channel as the connector's `MESSAGES[]` item, then the customer's CRM lead made sure of.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_core::{JobContext, JobError, JobKind};

use super::{
    conversation, lead, order,
    render::{self, split_name},
};
use crate::{
    bitrix::{BitrixError, id_text, truthy},
    media::{self, Media},
    meta::{MetaClient, payload::InboundUnit},
    relay::{Relay, meta_media_key, relay_key, retry_db},
    setting_values::public_link,
    store,
};

/// A customer message to put into the Open Channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayToBitrix {
    pub unit: InboundUnit,
}

impl JobKind for RelayToBitrix {
    const KIND: &'static str = "bitrix-connector.relay-to-bitrix";
}

pub async fn relay_to_bitrix(
    relay: &Relay,
    job: RelayToBitrix,
    ctx: JobContext,
) -> Result<(), JobError> {
    let unit = job.unit;
    let result = relay_in_turn(relay, &unit, &ctx).await;
    let settled = match &result {
        // Its turn, or the portal's room, comes later: it runs again.
        Ok(Relayed::Postponed) | Err(JobError::Postpone(..)) => false,
        // Woken when it was sent, before the lead.
        Ok(Relayed::Sent) => false,
        Ok(Relayed::Nothing) | Err(JobError::Permanent(_)) => true,
        Err(JobError::Retry(_)) => ctx.attempt >= switchboard_core::jobs::MAX_ATTEMPTS,
    };
    if settled {
        order::wake_next(relay, &unit).await;
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
    let Some(rendered) = render::render(&unit.message) else {
        tracing::info!(wamid = %unit.wamid, "nothing to show an operator; not relayed");
        return Ok(Relayed::Nothing);
    };
    let db = &relay.core.db;
    let connector = relay
        .bitrix
        .connector()
        .await
        .map_err(BitrixError::into_job_error)?;
    let line = crate::channels::for_number(relay, &unit.phone_number_id)
        .await
        .map_err(super::split::config_error)?
        .map(|c| c.line)
        .ok_or_else(|| {
            // The channel was removed after the message was accepted: a dead letter that a
            // replay relays once the number has a channel again.
            JobError::Permanent(format!(
                "no channel for WhatsApp number (phone_number_id) {}: add it as [[bitrix.channels]], then retry",
                unit.phone_number_id
            ))
        })?;
    let mut relayed = Relayed::Nothing;
    let (already_relayed, place) = store::relay_state(db, &unit.wamid)
        .await
        .map_err(retry_db)?;
    if !already_relayed {
        if let Some(wait) = order::wait_for_turn(relay, unit, place).await? {
            let queue = |e: switchboard_core::jobs::QueueError| JobError::Retry(e.to_string());
            relay
                .core
                .jobs
                .postpone(&ctx.task_id, wait)
                .await
                .map_err(queue)?;
            // The message before may have finished between the look and the postponing, and
            // found no waiting job to wake: look once more now that it would find one.
            if order::wait_for_turn(relay, unit, place).await?.is_none() {
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
        let mut media_note = None;
        if let Some(m) = &rendered.media {
            let meta = MetaClient::for_number(&relay.core, &unit.phone_number_id)
                .await
                .map_err(|e| JobError::Permanent(e.to_string()))?;
            match meta.download_media(&m.media_id).await {
                Ok((bytes, mime)) => {
                    let copy = Media {
                        mime,
                        filename: m.filename.clone(),
                        bytes,
                    };
                    let id = media::put(db, &meta_media_key(&m.media_id), &copy)
                        .await
                        .map_err(retry_db)?;
                    files.push(json!({"url": public_link(&relay.core, &format!("/media/{id}")), "name": m.filename}));
                }
                Err(e)
                    if e.is_retryable() && ctx.attempt < switchboard_core::jobs::MAX_ATTEMPTS =>
                {
                    return Err(e.into_job_error());
                }
                // For good: the rest of the message (its caption) still reaches the operator,
                // with a line saying what is missing, instead of a dead letter and an empty chat.
                Err(e) => {
                    tracing::warn!(wamid = %unit.wamid, error = %e, "a customer's media could not be fetched; relaying the message without it");
                    media_note = Some(format!(
                        "⚠ media could not be fetched ({e}): {}. Ask the customer to send it again.",
                        m.filename
                    ));
                }
            }
        }
        let text =
            conversation::shown_text(relay, unit, rendered.text.as_deref(), media_note).await?;
        let item = bitrix_message(relay, unit, text.as_deref(), files).await?;
        let result = relay
            .bitrix
            .call(
                "imconnector.send.messages",
                json!({"CONNECTOR": connector, "LINE": line, "MESSAGES": [item]}),
            )
            .await
            .map_err(BitrixError::into_job_error)?;
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
            .map_err(retry_db)?;
        metrics::counter!("switchboard_bitrix_relayed_total", "direction" => "inbound")
            .increment(1);
        order::wake_next(relay, unit).await;
        relayed = Relayed::Sent;
    }
    lead::ensure_lead(relay, unit, &line, rendered.text.as_deref())
        .await
        .map_err(BitrixError::into_job_error)?;
    Ok(relayed)
}

/// The `MESSAGES[]` item of protocol §4.1. A customer without a profile name is named by
/// their username (this message's, or the one last seen).
async fn bitrix_message(
    relay: &Relay,
    unit: &InboundUnit,
    text: Option<&str>,
    files: Vec<Value>,
) -> Result<Value, JobError> {
    let username = match &unit.username {
        Some(u) => Some(u.clone()),
        None if unit.name.is_none() => store::customer_username(&relay.core.db, &unit.customer)
            .await
            .map_err(retry_db)?,
        None => None,
    };
    let username = username.map(|u| u.trim_start_matches('@').to_string());
    let shown_name = unit
        .name
        .clone()
        .or_else(|| username.as_ref().map(|u| format!("@{u}")));
    let (first, last) = match (&unit.name, &username) {
        (None, Some(u)) => (username_as_name(u), String::new()),
        _ => split_name(shown_name.as_deref()),
    };
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
    if let Some(n) = &shown_name {
        chat["name"] = json!(n);
    }
    if phone_of(&unit.customer).is_some() {
        chat["url"] = json!(format!("https://wa.me/{}", unit.customer));
    }
    Ok(json!({"user": user, "message": message, "chat": chat}))
}

/// A username as a Bitrix first name (letters and `-` only, at most 25): `anna_s` → `anna-s`.
fn username_as_name(username: &str) -> String {
    let mapped: String = username
        .chars()
        .map(|c| if c.is_alphabetic() { c } else { ' ' })
        .collect();
    let joined = mapped.split_whitespace().collect::<Vec<_>>().join("-");
    joined
        .chars()
        .take(25)
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// `+<digits>` for a wa_id; `None` for a business-scoped user id, which is no phone number.
pub(super) fn phone_of(customer: &str) -> Option<String> {
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
