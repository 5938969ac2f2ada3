//! Every way a bridge call can fail, and the status and JSON body each one gets. A PBX answer —
//! any status, 4xx and 5xx included — is not an error here: it is passed back unchanged.

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use switchboard_core::http::{ErrorCause, error_body};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PBX bridge is not configured: SWITCHBOARD_PBX_BASE_URL is not set")]
    NotConfigured,
    #[error("{message}")]
    BadRequest {
        field: Option<&'static str>,
        message: String,
    },
    #[error("request body is larger than 1 MiB")]
    TooLarge,
    /// The PBX refused the org's credentials (a 4xx from login). The caller's body says
    /// "PBX login failed" (SPEC §2); this text is for the log.
    #[error("the PBX refused the login ({pbx_status})")]
    LoginRefused { pbx_status: u16 },
    /// Login broke on the PBX's side (5xx), not the caller's.
    #[error("PBX login failed: the PBX answered {pbx_status}")]
    LoginBroken { pbx_status: u16 },
    #[error("PBX login answer carried no token (looked for token, access_token, data.token)")]
    NoToken,
    /// Too many refused logins from this client or for this `api_key` (see `throttle.rs`).
    #[error("too many failed PBX logins; retry in {} s", retry_after.as_secs().max(1))]
    Throttled { retry_after: std::time::Duration },
    #[error("PBX unreachable")]
    Unreachable(#[source] reqwest::Error),
    #[error("PBX did not answer within {secs} s")]
    Timeout {
        secs: u64,
        #[source]
        source: reqwest::Error,
    },
}

impl Error {
    pub fn bad_request(field: Option<&'static str>, message: String) -> Self {
        Error::BadRequest { field, message }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::LoginRefused { .. } => StatusCode::UNAUTHORIZED,
            Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::LoginBroken { .. } | Error::NoToken | Error::Unreachable(_) => {
                StatusCode::BAD_GATEWAY
            }
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = match &self {
            Error::NotConfigured => {
                error_body(status, &self.to_string(), Some("SWITCHBOARD_PBX_BASE_URL"))
            }
            Error::BadRequest { field, message } => error_body(status, message, *field),
            // SPEC §2's shape, plus the PBX's status so a flow can tell "wrong secret" (401/403)
            // from "malformed login" (400) without us echoing the PBX's text.
            Error::LoginRefused { pbx_status } => (
                status,
                Json(serde_json::json!({"error": "PBX login failed", "pbx_status": pbx_status})),
            )
                .into_response(),
            Error::Throttled { retry_after } => {
                let mut r = error_body(status, &self.to_string(), None);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, retry_after.as_secs().max(1).into());
                r
            }
            _ => error_body(status, &self.to_string(), None),
        };
        if status.is_server_error() {
            // The binary's trace layer logs this once, inside the request span.
            response
                .extensions_mut()
                .insert(ErrorCause(cause_chain(&self)));
        }
        response
    }
}

/// `error: source: source…`, since reqwest keeps "connection refused" two sources down.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
