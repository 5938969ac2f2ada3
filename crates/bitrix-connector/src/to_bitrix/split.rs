//! The `meta` processor: one stored notification becomes one job per message and per status,
//! each recorded first (the customer's order, the status seen) and pushed once under its key.
//! Each goes to the channel of the number it was sent to; a number without a channel is
//! answered (the notification is authentic) but nothing of it is relayed.

use switchboard_core::{
    JobContext, JobError,
    inbox::{ProcessOutcome, StoredEvent},
};

use super::{message::RelayToBitrix, render, status::RelayStatusToBitrix};
use crate::{
    channels::{self, Channel},
    meta::payload as meta_payload,
    relay::{Relay, relay_key, retry_db, status_key},
    store,
};

/// Processor of source [`META_SOURCE`](crate::relay::META_SOURCE): records each unit and pushes
/// its job.
pub async fn process_meta_event(
    relay: &Relay,
    event: StoredEvent,
    _ctx: JobContext,
) -> Result<ProcessOutcome, JobError> {
    let db = &relay.core.db;
    let envelope = meta_payload::parse(&event.body).map_err(JobError::Permanent)?;
    let units = meta_payload::units(&envelope);
    for e in &units.errors {
        tracing::warn!(error = %e, "Meta reported an error not tied to a message");
    }
    let total = units.messages.len() + units.statuses.len();
    let served = channels::routing(relay).await.map_err(config_error)?;
    let served_by =
        |number: &str| -> Option<&Channel> { served.iter().find(|c| c.phone_number_id == number) };
    // The numbers without a channel, and the units routed to one.
    let mut unknown: Vec<String> = Vec::new();
    let (mut fresh, mut routed) = (0, 0);
    for (seq, mut unit) in units.messages.into_iter().enumerate() {
        let Some(channel) = served_by(&unit.phone_number_id) else {
            if !unknown.contains(&unit.phone_number_id) {
                unknown.push(unit.phone_number_id.clone());
            }
            continue;
        };
        routed += 1;
        let place = store::Place {
            sent_at: unit.timestamp,
            inbox_id: event.id,
            seq: seq as i64,
        };
        // The number the message came from, absent for a customer who hides it.
        let phone = unit
            .message
            .get("from")
            .and_then(|f| f.as_str())
            .filter(|f| !f.is_empty())
            .map(str::to_string);
        // A customer already known by this number, an earlier number or their user id keeps
        // their chat.
        if let Some(known) = store::known_customer(db, phone.as_deref(), unit.user_id.as_deref())
            .await
            .map_err(retry_db)?
        {
            unit.customer = known;
        }
        let body = render::quotable(&unit.message);
        let recorded = store::Inbound {
            wamid: &unit.wamid,
            channel: &channel.phone_number_id,
            customer: &unit.customer,
            name: unit.name.as_deref(),
            place,
            body: body.as_deref(),
            phone: phone.as_deref(),
            user_id: unit.user_id.as_deref(),
            username: unit.username.as_deref(),
            moved_to: render::new_number(&unit.message),
            came_from: super::conversation::lead_source(&unit),
        };
        if store::record_inbound(db, &recorded)
            .await
            .map_err(retry_db)?
        {
            fresh += 1;
        }
        // Pushed even when the wamid was known: the key makes it a no-op, and it covers a crash
        // between recording the unit and pushing its job. Held for this worker, the relay runs
        // as soon as this notification is split, without a second trip through the queue.
        let key = relay_key(&unit.wamid);
        relay
            .core
            .jobs
            .push_once_here(&RelayToBitrix { unit }, &event.request_id, &key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
    }
    for unit in units.statuses {
        if served_by(&unit.phone_number_id).is_none() {
            if !unknown.contains(&unit.phone_number_id) {
                unknown.push(unit.phone_number_id.clone());
            }
            continue;
        }
        routed += 1;
        if store::record_status(db, &unit.wamid, &unit.status)
            .await
            .map_err(retry_db)?
        {
            fresh += 1;
        }
        let key = status_key(&unit.wamid, &unit.status);
        relay
            .core
            .jobs
            .push_once(&RelayStatusToBitrix { unit }, &event.request_id, &key)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
    }
    if !unknown.is_empty() {
        for number in &unknown {
            channels::record_unknown(db, number)
                .await
                .map_err(retry_db)?;
        }
        // Messages and statuses not relayed for want of a channel.
        metrics::counter!("switchboard_bitrix_unknown_number_total")
            .increment((total - routed) as u64);
        let why = unknown_reason(&unknown);
        tracing::warn!(numbers = ?unknown, "{why}");
        // A notification partly for served numbers is judged by that part below.
        if routed == 0 {
            return Ok(ProcessOutcome::Skipped(why));
        }
    }
    Ok(match (total, fresh) {
        (0, _) => ProcessOutcome::Skipped("no messages or statuses in this notification".into()),
        (_, 0) => {
            ProcessOutcome::Skipped("duplicate: every message and status was seen before".into())
        }
        _ => ProcessOutcome::Processed,
    })
}

/// The audit reason for a notification to numbers no channel serves: names them, says what to do.
fn unknown_reason(numbers: &[String]) -> String {
    let shown: Vec<String> = numbers
        .iter()
        .take(5)
        .map(|n| {
            if n.is_empty() {
                "(none given)".to_string()
            } else {
                n.chars().take(40).collect()
            }
        })
        .collect();
    format!(
        "not relayed: no channel for WhatsApp number (phone_number_id) {}. Add it as [[bitrix.channels]] with its Open Channel's line_id, or, with a single number, set meta.phone_number_id to it",
        shown.join(", ")
    )
}

/// A channel that can't be resolved: unset settings are the operator's to fix (a dead letter
/// naming them, replayable once set); anything else may pass.
pub(crate) fn config_error(e: crate::Error) -> JobError {
    match e {
        crate::Error::NotConfigured { .. } => JobError::Permanent(e.to_string()),
        other => JobError::Retry(other.to_string()),
    }
}
