//! Processing of a stored wabridges event (the inbox processor for source `wabridges`): fold
//! it into the state, then queue one forward per interested subscriber. Runs as a core job, so
//! it is retried on failure and replayable; both steps are idempotent (see `state.rs`, and the
//! forward's idempotency key).

use switchboard_core::{
    Core, JobContext, JobError,
    inbox::{ProcessOutcome, StoredEvent},
};

use crate::{
    ROUTE_PREFIX,
    events::{self, Parsed},
    forward::{ForwardEvent, subscriber_key, targets, wants},
    state::{self, Origin},
};

pub async fn process_wabridges_event(
    core: Core,
    event: StoredEvent,
    ctx: JobContext,
) -> Result<ProcessOutcome, JobError> {
    // The route is the only record of which bridge sent it (SPEC §3.1); the handler wrote it.
    let bridge = event
        .route
        .strip_prefix(ROUTE_PREFIX)
        .filter(|b| events::valid_bridge_name(b))
        .ok_or_else(|| JobError::Permanent(format!("route `{}` names no bridge", event.route)))?;
    // The handler accepted only bodies that parse, so failing here means stored bytes changed.
    let parsed = events::parse(&event.body)
        .map_err(|e| JobError::Permanent(format!("stored body no longer parses: {e}")))?;
    let origin = Origin {
        bridge,
        event_id: event.id,
        received_secs: event.received_at / 1000,
    };
    state::apply(&core.db, &origin, &parsed)
        .await
        .map_err(|e| JobError::Retry(format!("updating wabridges state: {e}")))?;

    let event_type = parsed.event_type();
    let mut forwarded = 0;
    for target in targets(&core).iter().filter(|t| wants(t, event_type)) {
        let subscriber = subscriber_key(target);
        core.jobs
            .push_once(
                &ForwardEvent {
                    event_id: event.id,
                    bridge: bridge.to_string(),
                    event_type: event_type.to_string(),
                    subscriber: subscriber.to_string(),
                },
                &ctx.request_id,
                &format!("fwd:{}:{subscriber}", event.id),
            )
            .await
            .map_err(|e| JobError::Retry(format!("queueing forward: {e}")))?;
        forwarded += 1;
    }
    tracing::debug!(
        event_id = event.id,
        bridge,
        event_type,
        forwarded,
        "wabridges event processed"
    );
    Ok(match parsed {
        Parsed::Known(_) => ProcessOutcome::Processed,
        // Kept raw and forwarded to subscribers that asked for it; no state to keep.
        Parsed::Unknown(t) => ProcessOutcome::Skipped(format!("unknown event type {t}")),
    })
}
