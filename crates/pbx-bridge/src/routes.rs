//! `POST /whatsapp-bridge`, the bridge's one route (SPEC §2).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::Response,
    routing::post,
};

use switchboard_core::client_addr::TrustedProxies;

use switchboard_core::{Incoming, Status, http::RequestId};

use crate::{client::Answer, error::Error, logline::short_org, proxy::Proxy, request};

/// Bodies over 1 MiB are refused with 413, as the bridge's contract with MSG91 flows states.
/// Nothing of this route is stored, so the limit bounds only the memory of one parse.
pub const MAX_BODY: usize = 1024 * 1024;

pub fn router(state: BridgeState) -> Router {
    Router::new()
        .route("/whatsapp-bridge", post(proxy_pbx_call))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[derive(Clone)]
pub struct BridgeState {
    pub core: switchboard_core::Core,
    /// `None` while `pbx.base_url` is unset: the route stays mounted and answers 503.
    pub proxy: Option<Arc<Proxy>>,
    /// Whose `X-Forwarded-For` names the client the login throttle counts.
    pub trusted_proxies: Arc<TrustedProxies>,
}

/// The route's OpenAPI description, merged into `/openapi.json` by core.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(proxy_pbx_call),
    components(schemas(CallRequest, LoginFailed)),
    tags((name = "pbx", description = "MSG91 flows calling AstraPBX through the bridge.")),
)]
pub struct Api;

/// What an MSG91 flow posts (parsed by hand in `request.rs`, so each refusal names its field).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct CallRequest {
    /// The org's PBX API key.
    api_key: String,
    /// The org's PBX API secret; used to log in, never stored.
    api_secret: String,
    /// The PBX path to call, under one of the allowed prefixes (`/api/v1/calls/click-to-call`).
    endpoint: String,
    /// `GET`, `POST` (the default), `PUT`, `PATCH` or `DELETE`.
    method: Option<String>,
    /// The JSON (object or array) to forward to the PBX.
    #[schema(value_type = Option<Object>)]
    body: Option<serde_json::Value>,
}

/// The PBX refused the org's login: its status, without its text.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct LoginFailed {
    error: String,
    pbx_status: u16,
}

/// Logs in to the PBX as the org (token cached), forwards the call, and passes back the
/// PBX's status, content type and body untouched.
#[utoipa::path(
    post,
    path = "/whatsapp-bridge",
    tag = "pbx",
    request_body(content = CallRequest, content_type = "application/json"),
    responses(
        (status = "2XX", description = "The PBX's answer, passed back untouched"),
        (status = "4XX", description = "The PBX's answer to the forwarded call, passed back untouched"),
        (status = 400, description = "The request is malformed; `field` names what to fix", body = switchboard_core::http::ErrorBody),
        (status = 401, description = "The PBX refused the org's login", body = LoginFailed),
        (status = 413, description = "Body over 1 MiB", body = switchboard_core::http::ErrorBody),
        (status = 429, description = "Too many failed logins from this client; see `Retry-After`", body = switchboard_core::http::ErrorBody),
        (status = 502, description = "The PBX is unreachable or its login answer is unusable", body = switchboard_core::http::ErrorBody),
        (status = 503, description = "The bridge is not configured (no PBX base URL)", body = switchboard_core::http::ErrorBody),
        (status = 504, description = "The PBX did not answer in time", body = switchboard_core::http::ErrorBody),
    ),
)]
async fn proxy_pbx_call(
    State(s): State<BridgeState>,
    RequestId(request_id): RequestId,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let started = std::time::Instant::now();
    let mut seen = Seen::default();
    let result = call(&s, peer, &headers, body, &mut seen).await;
    audit(&s.core, &request_id, started, seen, &result);
    result
}

/// What the audit row of a call may say: the org's key shortened and where the call went.
/// Never the secret, the JWT or the forwarded body.
#[derive(Default)]
struct Seen {
    org: Option<String>,
    endpoint: Option<String>,
    method: Option<String>,
}

async fn call(
    s: &BridgeState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    seen: &mut Seen,
) -> Result<Response, Error> {
    let proxy = s.proxy.as_deref().ok_or(Error::NotConfigured)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge,
        _ => Error::bad_request(None, e.body_text()),
    })?;
    let req = request::parse(&body, &proxy.allowed_prefixes)?;
    seen.org = Some(short_org(&req.api_key));
    seen.endpoint = Some(req.endpoint.as_str().to_string());
    seen.method = Some(req.method.to_string());
    let client =
        peer.map(|Extension(ConnectInfo(addr))| s.trusted_proxies.client(addr.ip(), headers));
    let answer = proxy.call(&req, client).await;
    match &answer {
        Ok(a) if a.status.is_server_error() => s.core.calls.failed(
            crate::NAME,
            format!("the PBX answered {}", a.status.as_u16()),
        ),
        Ok(_) | Err(Error::LoginRefused { .. }) => s.core.calls.succeeded(crate::NAME),
        Err(
            e @ (Error::LoginBroken { .. }
            | Error::NoToken
            | Error::Unreachable(_)
            | Error::Timeout { .. }),
        ) => s.core.calls.failed(crate::NAME, e.to_string()),
        Err(_) => {}
    }
    Ok(pass_back(answer?))
}

/// Records the call in the audit log, off the caller's path: the answer does not wait for
/// the commit, and a failed write costs the log a line, not the caller its call.
fn audit(
    core: &switchboard_core::Core,
    request_id: &str,
    started: std::time::Instant,
    seen: Seen,
    result: &Result<Response, Error>,
) {
    if matches!(result, Err(Error::NotConfigured)) {
        return;
    }
    let status = match result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    let summary = serde_json::json!({
        "org": seen.org,
        "method": seen.method,
        "endpoint": seen.endpoint,
        "status": status,
    });
    let mut incoming = Incoming::new(
        request_id,
        crate::NAME,
        "/whatsapp-bridge",
        summary.to_string().as_bytes(),
        &HeaderMap::new(),
    );
    incoming.started = started;
    match result {
        Ok(_) if status < 500 => incoming.status = Status::Processed,
        Ok(_) => {
            incoming.status = Status::Failed;
            incoming.error = Some(format!("the PBX answered {status}"));
        }
        Err(
            e @ (Error::BadRequest { .. }
            | Error::TooLarge
            | Error::Throttled { .. }
            | Error::LoginRefused { .. }),
        ) => {
            incoming.status = Status::Rejected;
            incoming.error = Some(e.to_string());
        }
        Err(e) => {
            incoming.status = Status::Failed;
            incoming.error = Some(e.to_string());
        }
    }
    let inbox = core.inbox.clone();
    tokio::spawn(async move {
        if let Err(e) = inbox.record(incoming).await {
            tracing::warn!(error = %e, "PBX call not recorded in the audit log");
        }
    });
}

/// The PBX's status, content type and body, untouched (SPEC §2): MSG91 branches on them.
fn pass_back(answer: Answer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    if let Some(content_type) = answer.content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
