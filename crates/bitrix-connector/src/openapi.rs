//! The connector's part of `/openapi.json`: Meta's webhook (verification and notifications) and
//! Bitrix24's event callback. `/bitrix/install` (an HTML page in Bitrix24's frame) and
//! `/media/{id}` (the file itself) are not JSON routes and are left out.
//!
//! The handlers live in `to_bitrix/receive.rs` and `to_whatsapp/receive.rs`; these functions
//! only carry their descriptions, next to each other.

#![allow(dead_code)]

use switchboard_core::http::ErrorBody;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, SecurityScheme},
};

/// Meta's signature of the raw body: `X-Hub-Signature-256: sha256=<HMAC-SHA256 hex>` keyed by
/// the app secret.
pub const META_SIGNATURE: &str = "meta_signature";

#[derive(OpenApi)]
#[openapi(
    paths(verify_meta_subscription, receive_meta_webhook, receive_bitrix_event),
    modifiers(&MetaSignature),
    tags((name = "bitrix", description = "The Bitrix24 connector: WhatsApp Cloud API ⇄ Open Channels.")),
)]
pub struct Api;

struct MetaSignature;

impl Modify for MetaSignature {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                META_SIGNATURE,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-Hub-Signature-256",
                    "sha256=<hex HMAC-SHA256 of the raw body, keyed by meta.app_secret>",
                ))),
            );
    }
}

/// Meta's subscription check: answers `hub.challenge` when `hub.verify_token` matches.
#[utoipa::path(
    get,
    path = "/webhook/whatsapp",
    tag = "bitrix",
    params(
        ("hub.mode" = Option<String>, Query, description = "`subscribe`"),
        ("hub.verify_token" = Option<String>, Query, description = "meta.verify_token"),
        ("hub.challenge" = Option<String>, Query, description = "Echoed back on success"),
    ),
    responses(
        (status = 200, description = "The challenge, as text", body = String, content_type = "text/plain"),
        (status = 403, description = "Wrong verify token or not a subscription check", body = ErrorBody),
        (status = 503, description = "No verify token is configured", body = ErrorBody),
    ),
)]
fn verify_meta_subscription() {}

/// WhatsApp notifications (messages, statuses): verified, stored, then acknowledged; relayed
/// to Bitrix24 by the queue.
#[utoipa::path(
    post,
    path = "/webhook/whatsapp",
    tag = "bitrix",
    request_body(content = Object, content_type = "application/json", description = "A WhatsApp Business Account notification (`object`, `entry[].changes[]`)"),
    responses(
        (status = 200, description = "Stored: acknowledged (empty body)"),
        (status = 400, description = "Not a notification envelope", body = ErrorBody),
        (status = 401, description = "Signature missing or wrong", body = ErrorBody),
        (status = 413, description = "Body over 4 MiB"),
        (status = 503, description = "No app secret is configured", body = ErrorBody),
    ),
    security(("meta_signature" = [])),
)]
fn receive_meta_webhook() {}

/// Bitrix24's event callback (an operator's reply, a message read…), authenticated by the
/// application token inside the form.
#[utoipa::path(
    post,
    path = "/bitrix/events",
    tag = "bitrix",
    request_body(content = Object, content_type = "application/x-www-form-urlencoded", description = "`event`, `data[...]` and `auth[...]` fields, as Bitrix24 posts them"),
    responses(
        (status = 200, description = "Stored: acknowledged (empty body, or a short page when opened in Bitrix24)"),
        (status = 400, description = "No event or a malformed form", body = ErrorBody),
        (status = 403, description = "The application token does not match", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB"),
        (status = 503, description = "The connector is not configured", body = ErrorBody),
    ),
)]
fn receive_bitrix_event() {}
