//! wabridges hooks: receives the events a wabridges bridge posts to its `webhook_url`,
//! persists each before the 200, and processes them into queryable state and signed forwards.
//! Owns `/wabridges/hooks/{bridge}` and `/api/wabridges/*`. Must not depend on another bridge.

use axum::Router;
use switchboard_core::{
    Core,
    ops::{BridgeInfo, Readiness},
};

pub fn router(_core: &Core) -> Router {
    Router::new()
}

pub fn info(core: &Core) -> BridgeInfo {
    let settings = core.settings.clone();
    BridgeInfo::new(
        "wabridges",
        "wabridges hooks",
        &["POST /wabridges/hooks/{bridge}"],
        move || {
            let settings = settings.clone();
            async move {
                let configured = matches!(settings.get("wabridges.token").await, Ok(Some(_)));
                Readiness {
                    configured,
                    missing: if configured {
                        vec![]
                    } else {
                        vec!["SWITCHBOARD_WABRIDGES_TOKEN"]
                    },
                }
            }
        },
    )
}

/// Registers this bridge's job handlers and inbox processors (called by the binary).
pub fn register(
    _core: &Core,
    _jobs: &mut switchboard_core::JobRegistry,
    _processors: &mut switchboard_core::processing::Processors,
) {
}

/// This bridge's periodic work (called by the binary).
pub fn scheduled(_core: &Core) -> Vec<switchboard_core::scheduler::Task> {
    Vec::new()
}
