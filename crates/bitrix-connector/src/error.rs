//! The crate's one error type for HTTP handlers, and the fix texts of the seed's
//! troubleshooting table, shared by jobs, logs and the CLI so each problem is explained once.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use switchboard_core::{
    credentials::CredentialError,
    http::{error_body, internal_error},
    inbox::InboxError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SPEC §1.1: a bridge without its settings answers 503 naming the missing one.
    #[error("{setting} is not configured")]
    NotConfigured { setting: &'static str },
    #[error("X-Hub-Signature-256 is missing or does not match the body")]
    BadSignature,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    /// The same request is already being handled.
    #[error("{0}")]
    Conflict(String),
    /// Meta refused what was asked, for a reason the caller can fix (the text says how).
    #[error("{0}")]
    Refused(String),
    /// Meta could not be reached or failed; trying again later may work.
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::NotConfigured { setting } => error_body(
                StatusCode::SERVICE_UNAVAILABLE,
                &self.to_string(),
                Some(setting),
            ),
            Error::BadSignature => error_body(StatusCode::UNAUTHORIZED, &self.to_string(), None),
            Error::BadRequest(m) => error_body(StatusCode::BAD_REQUEST, m, None),
            Error::Forbidden(m) => error_body(StatusCode::FORBIDDEN, m, None),
            Error::NotFound => error_body(StatusCode::NOT_FOUND, "not found", None),
            Error::Conflict(m) => error_body(StatusCode::CONFLICT, m, None),
            Error::Refused(m) => error_body(StatusCode::UNPROCESSABLE_ENTITY, m, None),
            Error::Upstream(m) => error_body(StatusCode::BAD_GATEWAY, m, None),
            _ => internal_error(&self),
        }
    }
}

/// Fix texts from the seed's troubleshooting table, in this product's words.
pub mod fix {
    pub const INVALID_TOKEN: &str = "Stored OAuth grant isn't valid for the app/portal (never installed, reinstalled, or placeholder). Re-install the local app in Bitrix24, then retry (`switchboard jobs retry all`).";
    pub const INVALID_GRANT: &str = "The refresh token is fake, revoked or from another app. Re-install the local app to mint a fresh grant, and confirm bitrix.client_id / bitrix.client_secret match the current app.";
    pub const NOT_ACTIVE_LINE: &str = "Connector registered but not connected to the line. Run `switchboard bitrix activate-connector`.";
    pub const NOT_INSTALLED: &str = "No Bitrix24 OAuth grant is stored: install the local application from inside Bitrix24 (/setup shows its install path).";
    pub const NO_PROVIDER: &str = "The connector is not registered on the portal (or bitrix.connector_id differs). Run `switchboard bitrix register-connector`, then `switchboard bitrix activate-connector`.";
    pub const SCOPE: &str = "The local application lacks a scope: give it crm, imconnector, imopenlines and im, then re-install it.";
    pub const WRONG_AUTH_TYPE: &str = "imconnector.* needs the local application's OAuth token, not an inbound webhook: install the local app and let the bridge use its grant.";
    pub const META_190: &str = "Meta access token invalid or expired. Generate a non-expiring System User token, save it as meta.access_token, and verify with `switchboard whatsapp check-token`.";
    pub const META_131030: &str = "Using a test number: add the recipient to the allowed list in the Meta app, or move to a production number.";
    pub const META_131047: &str = "More than 24 hours since the customer's last message: WhatsApp only allows an approved template now. Send one with `/template NAME`, or wait for the customer to write.";
    pub const META_132000: &str = "The values do not match the template's variables (Meta's copy may have changed since the last sync). Type /templates to see what it needs now, then send it again with every variable filled.";
    pub const META_132001: &str = "Meta has no approved template of that name in that language. Type /templates for the approved ones, or check the name and language in WhatsApp Manager → Message templates.";
    pub const META_132012: &str = "A value has the wrong format for its variable (say, text where the header needs an image link). Type /templates to see what each variable takes.";
    pub const META_132015: &str = "Meta paused this template for low quality. Pick another approved template (/templates lists them), or edit the template in WhatsApp Manager → Message templates and wait for its review.";
    pub const META_132016: &str = "Meta disabled this template for good after repeated pauses. Create a new template in WhatsApp Manager → Message templates, and send another approved one meanwhile (/templates lists them).";
    pub const APPLICATION_TOKEN: &str = "bitrix.application_token doesn't match the token Bitrix sends. Clear it to use the token of the verified install, or set it to the local app's application token (a re-install may change it).";
    pub const NO_APPLICATION_TOKEN: &str = "No application token is known, so events can't be told from forgeries (an event never supplies it). Install the local app from inside Bitrix24 as a portal administrator — the verified install stores the token — or set bitrix.application_token.";
    pub const INSTALL_AS_ADMIN: &str = "Install the local application from inside Bitrix24 while signed in as a portal administrator; an ordinary user's tokens are not accepted as the app's grant.";
    pub const OTHER_PORTAL: &str = "The stored grant belongs to another Bitrix24 portal at this address (a different member_id), and only an install from that portal replaces it. When you move to a portal at a new address, set bitrix.portal_url to it first: a grant for an address other than bitrix.portal_url is replaced by the next verified install.";
}
