//! PBX bridge: lets an MSG91 WhatsApp flow call any AstraPBX API with an org's api_key and
//! api_secret, while the bridge handles the JWT (login, cache, refresh on 401). Owns
//! `POST /whatsapp-bridge`. Must not depend on another bridge or persist credentials: orgs are
//! added by MSG91 configuration alone (the seed's promise).

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::post};
use switchboard_core::{
    Core,
    ops::{BridgeInfo, Readiness},
};

pub fn router(core: &Core) -> Router {
    let core = core.clone();
    Router::new().route(
        "/whatsapp-bridge",
        post(move || {
            let core = core.clone();
            async move {
                if core.config.get("pbx.base_url").is_none() {
                    return switchboard_core::http::error_body(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "PBX bridge is not configured: SWITCHBOARD_PBX_BASE_URL is not set",
                        Some("SWITCHBOARD_PBX_BASE_URL"),
                    );
                }
                (
                    StatusCode::NOT_IMPLEMENTED,
                    Json(serde_json::json!({"error": "not yet"})),
                )
                    .into_response()
            }
        }),
    )
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
