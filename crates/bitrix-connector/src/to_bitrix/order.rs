//! A customer's messages reach Bitrix in Meta's order: a relay job asks whether its message
//! is next before sending, and a message that is done with wakes the one after it. The order
//! is per channel (the number written to), since each channel is its own chat.

use switchboard_core::JobError;

use crate::{
    meta::payload::InboundUnit,
    relay::{META_SOURCE, Relay, relay_key, retry_db},
    store,
};

/// How soon a message that is not next looks again. An earlier notification of the customer
/// still being split is a matter of milliseconds; an earlier message being sent or retried
/// wakes the later one itself when done, so that wait is only the safety net.
const TURN_SPLITTING: std::time::Duration = std::time::Duration::from_secs(1);
const TURN_SENDING: std::time::Duration = std::time::Duration::from_secs(30);

/// `None`: the message, at `place` in its customer's order, is next; otherwise how long to
/// wait. A message without a place (stored before places were recorded) is always next.
pub(super) async fn wait_for_turn(
    relay: &Relay,
    unit: &InboundUnit,
    place: Option<store::Place>,
) -> Result<Option<std::time::Duration>, JobError> {
    let db = &relay.core.db;
    let Some(place) = place else {
        return Ok(None);
    };
    let jobs = &relay.core.jobs;
    let queue = |e: switchboard_core::jobs::QueueError| JobError::Retry(e.to_string());
    // The customer's id as a JSON string: notifications that carry it (rarely one that only
    // mentions it) hold this message back until they are split.
    let mention = serde_json::to_string(&unit.customer).unwrap_or_default();
    if jobs
        .inbox_work_before(META_SOURCE, place.inbox_id, &mention)
        .await
        .map_err(queue)?
    {
        return Ok(Some(TURN_SPLITTING));
    }
    let earlier: Vec<String> =
        store::unrelayed_before(db, &unit.phone_number_id, &unit.customer, place)
            .await
            .map_err(retry_db)?
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
pub(super) async fn wake_next(relay: &Relay, unit: &InboundUnit) {
    let db = &relay.core.db;
    let next = match store::place_of(db, &unit.wamid).await {
        Ok(Some(place)) => {
            store::next_unrelayed_after(db, &unit.phone_number_id, &unit.customer, place).await
        }
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
