//! Bitrix24 connector: relays WhatsApp Cloud API messages into a Bitrix24 Open Channel and
//! operator replies back. Owns `/webhook/whatsapp`, `/bitrix/*`, `/media/{id}`, the relay jobs
//! and the Meta and Bitrix clients. Must not depend on another bridge or start workers itself
//! (the binary does).

use axum::Router;
use switchboard_core::{
    Core,
    ops::{BridgeInfo, Readiness},
};

/// Settings without which nothing can be relayed, as (setting key, env name).
const REQUIRED: &[(&str, &str)] = &[
    ("meta.app_secret", "SWITCHBOARD_META_APP_SECRET"),
    ("meta.access_token", "SWITCHBOARD_META_ACCESS_TOKEN"),
    ("meta.phone_number_id", "SWITCHBOARD_META_PHONE_NUMBER_ID"),
    ("meta.verify_token", "SWITCHBOARD_META_VERIFY_TOKEN"),
    ("bitrix.portal_url", "SWITCHBOARD_BITRIX_PORTAL_URL"),
    ("bitrix.client_id", "SWITCHBOARD_BITRIX_CLIENT_ID"),
    ("bitrix.client_secret", "SWITCHBOARD_BITRIX_CLIENT_SECRET"),
    ("bitrix.line_id", "SWITCHBOARD_BITRIX_LINE_ID"),
];

pub fn router(_core: &Core) -> Router {
    Router::new()
}

pub fn info(core: &Core) -> BridgeInfo {
    let settings = core.settings.clone();
    BridgeInfo::new(
        "bitrix",
        "Bitrix24 connector (WhatsApp ⇄ Open Channel)",
        &[
            "/webhook/whatsapp",
            "/bitrix/events",
            "/bitrix/install",
            "/media/{id}",
        ],
        move || {
            let settings = settings.clone();
            async move {
                let mut missing = Vec::new();
                for (key, env) in REQUIRED {
                    if !matches!(settings.get(key).await, Ok(Some(_))) {
                        missing.push(*env);
                    }
                }
                Readiness {
                    configured: missing.is_empty(),
                    missing,
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
