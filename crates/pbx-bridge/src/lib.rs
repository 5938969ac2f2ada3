//! PBX bridge: lets an MSG91 WhatsApp flow call any AstraPBX API with an org's api_key and
//! api_secret, while the bridge handles the JWT (login, cache, refresh on 401). Owns
//! `POST /whatsapp-bridge`. A synchronous proxy: MSG91 waits for the PBX's answer, so nothing
//! goes through the inbox or the job queue. Must not depend on another bridge or persist
//! credentials: orgs are added by MSG91 configuration alone, and tokens
//! live in memory only.
//!
//! Read `routes.rs`, then `proxy.rs`; the open-proxy defence is `endpoint.rs`, the single-flight
//! token cache `token_cache.rs`.

pub mod catalogue;
mod client;
/// Public so a fuzz target can drive the allow-list directly (SPEC §7).
pub mod endpoint;
mod error;
mod jwt;
mod logline;
mod proxy;
mod request;
mod routes;
mod throttle;
mod token_cache;

use std::{sync::Arc, time::Duration};

use axum::Router;
use catalogue::{PBX_ALLOWED_PREFIXES, PBX_BASE_URL, PBX_TIMEOUT_SECS, PBX_TOKEN_TTL_SECS};
use switchboard_core::{
    Core,
    client_addr::TrustedProxies,
    config::catalogue::TRUSTED_PROXIES,
    ops::{BridgeInfo, Check, ProbeCache, Readiness},
};

pub use error::Error;
pub use routes::MAX_BODY;
pub use throttle::CLIENT_FAILURES;

/// `POST /whatsapp-bridge`. Each call builds its own token cache, so the binary calls it once.
pub fn router(core: &Core) -> Router {
    let config = &core.config;
    let proxy = config.get(PBX_BASE_URL).map(|base_url| {
        Arc::new(proxy::Proxy {
            client: client::PbxClient::new(
                core.http.clone(),
                base_url,
                Duration::from_secs(config.integer_or_default(PBX_TIMEOUT_SECS)),
            ),
            tokens: token_cache::TokenCache::new(Duration::from_secs(
                config.integer_or_default(PBX_TOKEN_TTL_SECS),
            )),
            allowed_prefixes: config.list(PBX_ALLOWED_PREFIXES),
            throttle: throttle::LoginThrottle::default(),
        })
    });
    // Checked when the configuration loaded.
    let trusted_proxies = TrustedProxies::parse(&config.list(TRUSTED_PROXIES)).unwrap_or_default();
    routes::router(routes::BridgeState {
        core: core.clone(),
        proxy,
        trusted_proxies: Arc::new(trusted_proxies),
    })
}

/// The bridge's name on `/health` and its source in the audit log.
pub const NAME: &str = "pbx";

pub fn info(core: &Core) -> BridgeInfo {
    let probe_core = core.clone();
    let probes = ProbeCache::new(Duration::from_secs(30));
    let core = core.clone();
    BridgeInfo::new(
        NAME,
        "PBX bridge (MSG91 → AstraPBX)",
        &["POST /whatsapp-bridge"],
        move || {
            let configured = core.config.get(PBX_BASE_URL).is_some();
            async move {
                Readiness {
                    configured,
                    missing: if configured {
                        vec![]
                    } else {
                        vec![PBX_BASE_URL.env]
                    },
                }
            }
        },
    )
    .with_checks(move || {
        let (core, probes) = (probe_core.clone(), probes.clone());
        async move {
            let Some(base) = core.config.get(PBX_BASE_URL).map(str::to_string) else {
                return Vec::new();
            };
            let probe = reachable(core.http.clone(), base.clone());
            vec![probes.get_or_probe(base.as_bytes(), probe).await]
        }
    })
    .with_records(&[NAME])
    .with_api(<routes::Api as utoipa::OpenApi>::openapi())
}

/// Any HTTP answer from the PBX base URL counts as reachable: the probe has no org
/// credentials, so it can only tell whether something answers there.
async fn reachable(http: reqwest::Client, base: String) -> Check {
    const LABEL: &str = "PBX base URL reachable";
    let shown = switchboard_core::db::redact_url(&base);
    match http.get(&base).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => Check::new(
            LABEL,
            true,
            format!("{shown} answered {}", r.status().as_u16()),
        ),
        Err(e) => Check::new(
            LABEL,
            false,
            format!(
                "{shown} did not answer ({}). Check SWITCHBOARD_PBX_BASE_URL and that this host can reach the PBX.",
                if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection refused or DNS failure"
                } else {
                    "request failed"
                }
            ),
        ),
    }
}

/// The PBX bridge has no jobs or inbox processors: it answers MSG91 synchronously.
pub fn register(
    _core: &Core,
    _jobs: &mut switchboard_core::JobRegistry,
    _processors: &mut switchboard_core::inbox::Processors,
) {
}

/// No periodic work: tokens are refreshed when used, never on a timer.
pub fn scheduled(_core: &Core) -> Vec<switchboard_core::scheduler::Task> {
    Vec::new()
}
