//! The `meta` processor: one stored notification becomes one job per message and per status,
//! each recorded first (the customer's order, the status seen) and pushed once under its key.

use switchboard_core::{
    JobContext, JobError,
    inbox::{ProcessOutcome, StoredEvent},
};

use super::{message::RelayToBitrix, status::RelayStatusToBitrix};
use crate::{
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
    let mut fresh = 0;
    for (seq, unit) in units.messages.into_iter().enumerate() {
        let place = store::Place {
            sent_at: unit.timestamp,
            inbox_id: event.id,
            seq: seq as i64,
        };
        if store::record_inbound(db, &unit.wamid, &unit.customer, place)
            .await
            .map_err(retry_db)?
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
        .map_err(retry_db)?;
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
    Ok(match (total, fresh) {
        (0, _) => ProcessOutcome::Skipped("no messages or statuses in this notification".into()),
        (_, 0) => {
            ProcessOutcome::Skipped("duplicate: every message and status was seen before".into())
        }
        _ => ProcessOutcome::Processed,
    })
}
