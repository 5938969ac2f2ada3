//! The bridge's part of `/openapi.json`: the hook and the admin API over the state. The paths
//! are annotated on their handlers (`routes.rs`, `api.rs`); the bodies they answer are here.

use serde_json::Value;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// The hook token (`SWITCHBOARD_WABRIDGES_TOKEN`) as `Authorization: Bearer`.
pub const HOOK_TOKEN: &str = "wabridges_token";
/// The hook token as the password of HTTP Basic (`https://hook:<token>@host/…`).
pub const HOOK_TOKEN_BASIC: &str = "wabridges_token_basic";
/// The hook token as `?token=`.
pub const HOOK_TOKEN_QUERY: &str = "wabridges_token_query";

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::routes::receive_wabridges_hook,
        crate::api::list_bridges,
        crate::api::list_messages,
        crate::api::list_contacts,
        crate::api::list_calls,
        crate::api::list_poll_votes,
        crate::api::list_event_responses,
    ),
    components(schemas(
        Ack, BridgesPage, MessagesPage, ContactsPage, CallsPage, PollVotes, EventResponses,
    )),
    modifiers(&HookToken),
    tags((name = "wabridges", description = "Events from wabridges bridges, and the state they build.")),
)]
pub struct Api;

struct HookToken;

impl Modify for HookToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, scheme) in [
            (HOOK_TOKEN, HttpAuthScheme::Bearer),
            (HOOK_TOKEN_BASIC, HttpAuthScheme::Basic),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(scheme)
                        .description(Some("SWITCHBOARD_WABRIDGES_TOKEN"))
                        .build(),
                ),
            );
        }
        components.add_security_scheme(
            HOOK_TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "SWITCHBOARD_WABRIDGES_TOKEN as a query parameter",
            ))),
        );
    }
}

/// The hook's 200: the event is stored (`received`) or was stored before (`duplicate`).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Ack {
    #[schema(value_type = String, pattern = "^(received|duplicate)$")]
    pub status: &'static str,
    /// The audit row (`/admin/events`).
    pub id: i64,
}

/// `GET /api/wabridges/bridges`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct BridgesPage {
    /// Each bridge with its counts and last event.
    #[schema(value_type = Vec<Object>)]
    pub bridges: Vec<Value>,
    /// Pass as `after` for the next page; `null` on the last.
    #[schema(value_type = Option<String>)]
    pub next_after: Value,
}

/// `GET /api/wabridges/bridges/{bridge}/messages`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct MessagesPage {
    pub bridge: String,
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// Pass as `before` for the next page; `null` on the last.
    #[schema(value_type = Option<String>)]
    pub next_before: Value,
}

/// `GET /api/wabridges/bridges/{bridge}/contacts`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ContactsPage {
    pub bridge: String,
    #[schema(value_type = Vec<Object>)]
    pub contacts: Vec<Value>,
    /// Pass as `before` for the next page; `null` on the last.
    #[schema(value_type = Option<i64>)]
    pub next_before: Value,
}

/// `GET /api/wabridges/bridges/{bridge}/calls`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct CallsPage {
    pub bridge: String,
    #[schema(value_type = Vec<Object>)]
    pub calls: Vec<Value>,
    /// Pass as `before` for the next page; `null` on the last.
    #[schema(value_type = Option<i64>)]
    pub next_before: Value,
}

/// `GET /api/wabridges/bridges/{bridge}/polls/{poll_id}/votes`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct PollVotes {
    pub bridge: String,
    pub poll_id: String,
    #[schema(value_type = Vec<Object>)]
    pub votes: Vec<Value>,
}

/// `GET /api/wabridges/bridges/{bridge}/events/{event_id}/responses`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct EventResponses {
    pub bridge: String,
    pub event_id: String,
    #[schema(value_type = Vec<Object>)]
    pub responses: Vec<Value>,
}
