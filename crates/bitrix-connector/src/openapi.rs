//! The connector's part of `/openapi.json`: Meta's webhook (verification and notifications),
//! Bitrix24's event callback, and the admin API of message templates. `/bitrix/install` (an HTML page in Bitrix24's frame) and
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
    paths(
        verify_meta_subscription,
        receive_meta_webhook,
        receive_bitrix_event,
        list_templates,
        sync_templates,
        start_conversation
    ),
    components(schemas(
        crate::templates::api::TemplateList,
        crate::templates::api::Listed,
        crate::templates::sync::Synced,
        crate::templates::api::StartConversation,
        crate::templates::api::Values,
        crate::templates::api::Started
    )),
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

/// The account's message templates as last synced from Meta, each with its status and the
/// variables a send must fill (keys `header`, `1`, `2`…, or a named variable's name, and
/// `button1`… for buttons with a variable).
#[utoipa::path(
    get,
    path = "/api/bitrix/templates",
    tag = "bitrix",
    responses(
        (status = 200, description = "The templates, by name and language", body = crate::templates::api::TemplateList),
        (status = 401, description = "Admin token missing or wrong", body = ErrorBody),
        (status = 503, description = "No admin token is configured", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
fn list_templates() {}

/// Reads the templates from the WhatsApp Business Account now (every page of
/// `message_templates`) and replaces the stored list. Runs by itself at start and daily.
#[utoipa::path(
    post,
    path = "/api/bitrix/templates/sync",
    tag = "bitrix",
    responses(
        (status = 200, description = "Synced", body = crate::templates::sync::Synced),
        (status = 401, description = "Admin token missing or wrong", body = ErrorBody),
        (status = 502, description = "Meta refused or could not be reached; the error says why and how to fix it", body = ErrorBody),
        (status = 503, description = "No admin token, or meta.waba_id is not configured", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
fn sync_templates() {}

/// Writes first to a customer: sends an approved template to the phone number, then opens the
/// conversation in the channel's Open Channel line (showing the template as sent); the
/// customer's answer joins that chat. For an operator's tool, or a Bitrix24 automation's
/// outgoing webhook.
#[utoipa::path(
    post,
    path = "/api/bitrix/conversations",
    tag = "bitrix",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 200 characters: a call repeated with the same key answers with the first one's message instead of sending the template again"),
    ),
    request_body(content = crate::templates::api::StartConversation, content_type = "application/json",
        example = json!({"to": "+49 176 12345678", "template": "order_update", "language": "en_US",
                         "values": {"1": "{name}", "2": "1042"}, "name": "Anna Schmidt"})),
    responses(
        (status = 202, description = "Meta accepted the template; the chat opens in Bitrix24 in a moment", body = crate::templates::api::Started),
        (status = 400, description = "Bad number, unknown or unapproved template, missing or extra values (named), or a media link that is not public https", body = ErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = ErrorBody),
        (status = 409, description = "A call with the same Idempotency-Key is still sending", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB"),
        (status = 422, description = "Meta refused the template (paused, disabled, values not matching); the error carries the fix", body = ErrorBody),
        (status = 502, description = "Meta could not be reached; try again", body = ErrorBody),
        (status = 503, description = "No admin token is configured, or the connector is not", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_token_query" = [])),
)]
fn start_conversation() {}
