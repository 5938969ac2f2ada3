//! The crate's one error type and its JSON answer (`{"error", "field"}`, STYLE §4).

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use switchboard_core::http::{error_body, internal_error};

use crate::events::Malformed;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SWITCHBOARD_WABRIDGES_TOKEN is not configured")]
    NotConfigured,
    #[error("wabridges token missing or wrong")]
    WrongToken,
    #[error("bridge name must be 1–64 characters of A-Z a-z 0-9 _ -")]
    BadBridgeName,
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("unknown bridge `{0}`")]
    UnknownBridge(String),
    #[error("`{field}`: {problem}")]
    BadQuery {
        field: &'static str,
        problem: String,
    },
    #[error("inbox: {0}")]
    Inbox(#[from] switchboard_core::inbox::InboxError),
    #[error("settings: {0}")]
    Settings(#[from] switchboard_core::credentials::CredentialError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let msg = self.to_string();
        match &self {
            Error::NotConfigured => error_body(
                StatusCode::SERVICE_UNAVAILABLE,
                &msg,
                Some("SWITCHBOARD_WABRIDGES_TOKEN"),
            ),
            Error::WrongToken => error_body(StatusCode::UNAUTHORIZED, &msg, Some("token")),
            Error::BadBridgeName => error_body(StatusCode::BAD_REQUEST, &msg, Some("bridge")),
            Error::Malformed(m) => error_body(StatusCode::BAD_REQUEST, &msg, m.field().as_deref()),
            Error::UnknownBridge(_) => error_body(StatusCode::NOT_FOUND, &msg, Some("bridge")),
            Error::BadQuery { field, .. } => error_body(StatusCode::BAD_REQUEST, &msg, Some(field)),
            Error::Inbox(_) | Error::Settings(_) | Error::Db(_) => internal_error(msg),
        }
    }
}
