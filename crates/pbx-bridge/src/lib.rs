//! PBX bridge: lets an MSG91 WhatsApp flow call any AstraPBX API with an org's api_key and
//! api_secret, while the bridge handles the JWT (login, cache, refresh on 401). Owns
//! `POST /whatsapp-bridge`. A synchronous proxy: MSG91 waits for the PBX's answer, so nothing
//! goes through the inbox or the job queue. Must not depend on another bridge or persist
//! credentials: orgs are added by MSG91 configuration alone (the seed's promise), and tokens
//! live in memory only.
//!
//! Read `routes.rs`, then `proxy.rs`; the open-proxy defence is `endpoint.rs`, the single-flight
//! token cache `token_cache.rs`.

mod client;
/// Public so a fuzz target can drive the allow-list directly (SPEC §7).
pub mod endpoint;
mod error;
mod jwt;
mod logline;
mod proxy;
mod request;
mod routes;
mod token_cache;

use std::{sync::Arc, time::Duration};

use axum::Router;
use switchboard_core::{
    Core,
    ops::{BridgeInfo, Readiness},
};

pub use error::Error;
pub use routes::MAX_BODY;

/// `POST /whatsapp-bridge`. Each call builds its own token cache, so the binary calls it once.
pub fn router(core: &Core) -> Router {
    let config = &core.config;
    let proxy = config.get("pbx.base_url").map(|base_url| {
        Arc::new(proxy::Proxy {
            client: client::PbxClient::new(
                core.http.clone(),
                base_url,
                Duration::from_secs(config.integer("pbx.timeout_secs").unwrap_or(15)),
            ),
            tokens: token_cache::TokenCache::new(Duration::from_secs(
                config.integer("pbx.token_ttl_secs").unwrap_or(82_800),
            )),
            allowed_prefixes: config.list("pbx.allowed_prefixes"),
        })
    });
    routes::router(routes::BridgeState { proxy })
}

pub fn info(core: &Core) -> BridgeInfo {
    let core = core.clone();
    BridgeInfo::new(
        "pbx",
        "PBX bridge (MSG91 → AstraPBX)",
        &["POST /whatsapp-bridge"],
        move || {
            let configured = core.config.get("pbx.base_url").is_some();
            async move {
                Readiness {
                    configured,
                    missing: if configured {
                        vec![]
                    } else {
                        vec!["SWITCHBOARD_PBX_BASE_URL"]
                    },
                }
            }
        },
    )
}

/// The PBX bridge has no jobs or inbox processors: it answers MSG91 synchronously.
pub fn register(
    _core: &Core,
    _jobs: &mut switchboard_core::JobRegistry,
    _processors: &mut switchboard_core::processing::Processors,
) {
}

/// No periodic work: tokens are refreshed when used, never on a timer.
pub fn scheduled(_core: &Core) -> Vec<switchboard_core::scheduler::Task> {
    Vec::new()
}
