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

use crate::{client::Answer, error::Error, proxy::Proxy, request};

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
    /// `None` while `pbx.base_url` is unset: the route stays mounted and answers 503.
    pub proxy: Option<Arc<Proxy>>,
    /// Whose `X-Forwarded-For` names the client the login throttle counts.
    pub trusted_proxies: Arc<TrustedProxies>,
}

async fn proxy_pbx_call(
    State(s): State<BridgeState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let proxy = s.proxy.as_deref().ok_or(Error::NotConfigured)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge,
        _ => Error::bad_request(None, e.body_text()),
    })?;
    let req = request::parse(&body, &proxy.allowed_prefixes)?;
    let client =
        peer.map(|Extension(ConnectInfo(addr))| s.trusted_proxies.client(addr.ip(), &headers));
    let answer = proxy.call(&req, client).await?;
    Ok(pass_back(answer))
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
