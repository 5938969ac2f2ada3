//! wabridges hooks: receives the events a wabridges bridge posts to its `webhook_url`
//! (`POST /wabridges/hooks/{bridge}?token=…`), commits each raw before answering 200, and then,
//! in a job, folds it into queryable state (`/api/wabridges/*`) and forwards it, signed, to
//! the configured subscribers — so a sender that never retries still loses nothing.
//! Owns those routes, the `wabridges_*` tables and the forward job. Must not depend on another
//! bridge or start workers itself (the binary does). Read `routes.rs`, then `process.rs`,
//! `state.rs` and `forward.rs`; the payload types are in `events.rs`.

pub mod api;
pub mod catalogue;
pub mod error;
pub mod events;
pub mod forward;
pub mod openapi;
pub mod process;
pub mod routes;
pub mod state;

use axum::Router;
use catalogue::WABRIDGES_TOKEN;
use switchboard_core::{
    Core, JobRegistry,
    inbox::Processors,
    ops::{BridgeInfo, Readiness},
    scheduler::{Task, When},
};

pub use error::Error;

/// The inbox source name: its own dedupe key space and the processor it goes to.
pub const SOURCE: &str = "wabridges";

/// Stored routes are this plus the bridge name; processing reads the bridge back from it.
pub const ROUTE_PREFIX: &str = "/wabridges/hooks/";

pub fn router(core: &Core) -> Router {
    routes::router(core)
}

pub fn info(core: &Core) -> BridgeInfo {
    let settings = core.settings.clone();
    BridgeInfo::new(
        "wabridges",
        "wabridges hooks",
        &[
            "POST /wabridges/hooks/{bridge}",
            "GET /api/wabridges/bridges",
            "GET /api/wabridges/bridges/{bridge}/{messages,contacts,calls}",
        ],
        move || {
            let settings = settings.clone();
            async move {
                let configured = matches!(settings.get(WABRIDGES_TOKEN).await, Ok(Some(_)));
                Readiness {
                    configured,
                    missing: if configured {
                        vec![]
                    } else {
                        vec![WABRIDGES_TOKEN.env]
                    },
                }
            }
        },
    )
    .with_work(&[SOURCE], Some("wabridges-hooks."))
    .with_api(<openapi::Api as utoipa::OpenApi>::openapi())
}

/// Registers this bridge's job handlers and inbox processors (called by the binary).
pub fn register(core: &Core, jobs: &mut JobRegistry, processors: &mut Processors) {
    let c = core.clone();
    processors.register(SOURCE, move |event, ctx| {
        process::process_wabridges_event(c.clone(), event, ctx)
    });
    let c = core.clone();
    jobs.register(move |job: forward::ForwardEvent, ctx| {
        forward::forward_event(c.clone(), job, ctx)
    });
}

/// This bridge's periodic work (called by the binary): while subscribers are configured,
/// forwards dead-lettered by an outage are put back on the queue (see `forward.rs`).
pub fn scheduled(core: &Core) -> Vec<Task> {
    if forward::targets(core).is_empty() {
        return Vec::new();
    }
    let core = core.clone();
    vec![Task::new(
        "wabridges.redeliver-forwards",
        When::Every(forward::REDELIVER_EVERY),
        move || {
            let core = core.clone();
            async move {
                forward::redeliver_dead_forwards(&core)
                    .await
                    .map(|n| format!("{n} dead-lettered forwards put back on the queue"))
            }
        },
    )]
}
