//! Route table, then the webhook handler. The admin API handlers are in `api.rs`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, Uri, header},
    routing::{get, post},
};
use base64::Engine as _;
use switchboard_core::{
    Core, Incoming, Recorded,
    db::now_ms,
    http::{RequestId, url_decode_pairs},
};

use crate::{
    ROUTE_PREFIX, SOURCE, api,
    error::Error,
    events::{self, Parsed},
};

/// The largest event wabridges sends is a `message`, whose `body` is the text: WhatsApp caps a
/// message at 65,536 characters, at most 6 bytes each once JSON-escaped (`\u003c`), so 384 KiB.
/// Anything larger is not from wabridges: refused with 413, never stored.
pub const MAX_BODY: usize = 512 * 1024;

pub fn router(core: &Core) -> Router {
    Router::new()
        .route(
            "/wabridges/hooks/{bridge}",
            post(receive_wabridges_hook).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/api/wabridges/bridges", get(api::list_bridges))
        .route(
            "/api/wabridges/bridges/{bridge}/messages",
            get(api::list_messages),
        )
        .route(
            "/api/wabridges/bridges/{bridge}/contacts",
            get(api::list_contacts),
        )
        .route(
            "/api/wabridges/bridges/{bridge}/calls",
            get(api::list_calls),
        )
        .route(
            "/api/wabridges/bridges/{bridge}/polls/{poll_id}/votes",
            get(api::list_poll_votes),
        )
        .route(
            "/api/wabridges/bridges/{bridge}/events/{event_id}/responses",
            get(api::list_event_responses),
        )
        .with_state(core.clone())
}

/// SPEC §3: token, bridge name, envelope; then one durable commit, and only then the 200.
/// Every refusal is recorded too (SPEC §1.3). No other database work happens before the ack.
#[utoipa::path(
    post,
    path = "/wabridges/hooks/{bridge}",
    tag = "wabridges",
    params(("bridge" = String, Path, description = "The sending bridge's name: letters, digits, `-` and `_`, at most 64")),
    request_body(content = Object, content_type = "application/json", description = "A wabridges event: an object whose `event` names its type (`message`, `connected`, `poll_vote`…) with that type's fields. An unknown type is stored and answered 200."),
    responses(
        (status = 200, description = "Stored (or stored before): acknowledged", body = crate::openapi::Ack),
        (status = 400, description = "Bad bridge name or malformed event; `field` names what to fix", body = switchboard_core::http::ErrorBody),
        (status = 401, description = "Hook token missing or wrong", body = switchboard_core::http::ErrorBody),
        (status = 413, description = "Body over 512 KiB"),
        (status = 503, description = "No hook token is configured", body = switchboard_core::http::ErrorBody),
    ),
    security(("wabridges_token" = []), ("wabridges_token_basic" = []), ("wabridges_token_query" = [])),
)]
pub(crate) async fn receive_wabridges_hook(
    State(core): State<Core>,
    Path(bridge): Path<String>,
    RequestId(request_id): RequestId,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<crate::openapi::Ack>, Error> {
    // Never the query: it may hold the token.
    let route = format!(
        "{ROUTE_PREFIX}{}",
        bridge.chars().take(80).collect::<String>()
    );
    let incoming = || Incoming::new(&request_id, SOURCE, &route, &body, &headers);
    let refuse = |why: Error| async {
        // The refusal stands even if the audit row can't be written; the log says so.
        if let Err(e) = core
            .inbox
            .record(incoming().rejected(why.to_string()))
            .await
        {
            tracing::warn!(error = %e, "could not record a refused wabridges call");
        }
        Err(why)
    };

    let Some(expected) = core
        .settings
        .secret(crate::catalogue::WABRIDGES_TOKEN)
        .await?
    else {
        return refuse(Error::NotConfigured).await;
    };
    if !presented_token(&headers, &uri).is_some_and(|t| expected.matches(&t)) {
        return refuse(Error::WrongToken).await;
    }
    if !events::valid_bridge_name(&bridge) {
        return refuse(Error::BadBridgeName).await;
    }
    let parsed = match events::parse(&body) {
        Ok(p) => p,
        Err(m) => return refuse(Error::Malformed(m)).await,
    };

    let key = events::dedupe_key(&bridge, &parsed, &body, now_ms() / 1000);
    let recorded = core.inbox.record(incoming().dedupe(key)).await?;
    let status = match recorded {
        Recorded::New(_) => {
            let kind = match &parsed {
                Parsed::Known(e) => e.event_type(),
                Parsed::Unknown(_) => "unknown",
            };
            metrics::counter!("switchboard_wabridges_events_total", "event" => kind).increment(1);
            "received"
        }
        Recorded::Duplicate(_) => "duplicate",
        Recorded::Logged(_) => "received",
    };
    Ok(Json(crate::openapi::Ack {
        status,
        id: recorded.id(),
    }))
}

/// The hook token: `Authorization: Bearer <token>`, or Basic with the token as the password
/// (what an HTTP client makes of `https://hook:<token>@host/…`), or `?token=`. The headers keep it
/// out of URLs, which proxies and load balancers write to their access logs.
fn presented_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(bearer) = auth.strip_prefix("Bearer ") {
            return Some(bearer.trim().to_string());
        }
        if let Some(basic) = auth.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())?;
            return decoded
                .split_once(':')
                .map(|(_, password)| password.to_string());
        }
    }
    uri.query()
        .and_then(|q| url_decode_pairs(q).into_iter().find(|(k, _)| k == "token"))
        .map(|(_, v)| v)
}
