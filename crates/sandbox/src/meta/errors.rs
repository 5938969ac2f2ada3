//! Graph API error bodies, synchronous (`{"error":{...}}` with an HTTP status) and asynchronous
//! (`{code,title,message,error_data,href}` inside webhooks), per protocol §5. Codes, titles and
//! HTTP statuses come from the §5.2 table so the product meets the same mix of statuses Meta
//! answers with (400 for most WhatsApp codes, 401 for tokens, 5xx only for a few).

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

pub const ERROR_CODES_HREF: &str =
    "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/";

/// One Graph error as Meta answers it synchronously.
#[derive(Debug, Clone)]
pub struct GraphError {
    pub status: StatusCode,
    pub code: u32,
    /// `OAuthException` for nearly everything WhatsApp; `GraphMethodException` for unknown ids.
    pub kind: &'static str,
    pub message: String,
    pub subcode: Option<u32>,
    /// `error_data.details`: the human explanation Meta puts next to the terse title.
    pub details: Option<String>,
}

impl GraphError {
    /// A code from the §5.2 table with its documented title and HTTP status.
    pub fn for_code(code: u32) -> Self {
        if code == 190 {
            return Self::expired_token();
        }
        let known = describe(code);
        let (status, title, details) = known.unwrap_or((
            StatusCode::BAD_REQUEST,
            "Unknown error",
            "The sandbox has no entry for this code.",
        ));
        Self {
            status,
            code,
            kind: "OAuthException",
            message: format!("(#{code}) {title}"),
            subcode: (code == 131030).then_some(2_655_007),
            details: Some(details.to_string()),
        }
    }

    /// A token the fake never issued (typo, wrong app, header missing).
    pub fn invalid_token() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: 190,
            kind: "OAuthException",
            message: "Invalid OAuth access token - Cannot parse access token".into(),
            subcode: None,
            details: None,
        }
    }

    /// A token that used to work: Meta says "expired" with subcode 463.
    pub fn expired_token() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: 190,
            kind: "OAuthException",
            message: "Error validating access token: Session has expired.".into(),
            subcode: Some(463),
            details: None,
        }
    }

    /// Graph's answer for an id it cannot resolve (or a first path segment that is no version).
    pub fn unknown_object(verb: &str, id: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: 100,
            kind: "GraphMethodException",
            message: format!(
                "Unsupported {verb} request. Object with ID '{id}' does not exist, cannot be \
                 loaded due to missing permissions, or does not support this operation. Please \
                 read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
            ),
            subcode: Some(33),
            details: None,
        }
    }

    pub fn param_required(name: &str) -> Self {
        Self::invalid_parameter(format!("The parameter {name} is required."))
    }

    /// Code 100 with Graph's own sentence as the message.
    pub fn invalid_parameter(sentence: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: 100,
            kind: "OAuthException",
            message: format!("(#100) {}", sentence.into()),
            subcode: None,
            details: None,
        }
    }

    pub fn missing(details: impl Into<String>) -> Self {
        Self::for_code(131_008).with_details(details)
    }

    pub fn invalid_value(details: impl Into<String>) -> Self {
        Self::for_code(131_009).with_details(details)
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn body(&self) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "fbtrace_id": fbtrace_id(),
        });
        if let Some(details) = &self.details {
            error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
        }
        if let Some(sub) = self.subcode {
            error["error_subcode"] = json!(sub);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if self.code == 190 {
            // Graph names the OAuth failure in WWW-Authenticate as well as in the body.
            let value = format!(
                "OAuth \"Facebook Platform\" \"invalid_token\" \"{}\"",
                self.message.replace('"', "'")
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

/// The error object carried by webhooks (`statuses[].errors[]`, `messages[].errors[]`,
/// `value.errors[]`), shaped like the §2.6 failed-status example.
pub fn async_error(code: u32, details: Option<&str>) -> Value {
    let (_, title, default_details) = describe(code).unwrap_or((
        StatusCode::BAD_REQUEST,
        "Unknown error",
        "The sandbox has no entry for this code.",
    ));
    json!({
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details.unwrap_or(default_details)},
        "href": ERROR_CODES_HREF,
    })
}

/// HTTP status, title and explanation per code (§5.2).
fn describe(code: u32) -> Option<(StatusCode, &'static str, &'static str)> {
    use StatusCode as S;
    let bad = S::BAD_REQUEST;
    Some(match code {
        0 => (
            S::UNAUTHORIZED,
            "AuthException",
            "We were unable to authenticate the app user.",
        ),
        1 => (
            bad,
            "API Unknown",
            "Invalid request or possible server error.",
        ),
        2 => (
            S::SERVICE_UNAVAILABLE,
            "API Service",
            "Temporary due to downtime or due to being overloaded.",
        ),
        3 => (
            S::INTERNAL_SERVER_ERROR,
            "API Method",
            "Capability or permissions issue.",
        ),
        4 => (
            bad,
            "Application request limit reached",
            "The app has reached its API call rate limit.",
        ),
        10 => (
            S::FORBIDDEN,
            "Permission denied",
            "Permission is either not granted or has been removed.",
        ),
        100 => (
            bad,
            "Invalid parameter",
            "The request included one or more unsupported or misspelled parameters.",
        ),
        200 => (
            S::FORBIDDEN,
            "API Permission",
            "Permission is either not granted or has been removed.",
        ),
        368 => (
            S::FORBIDDEN,
            "Temporarily blocked for policies violations",
            "The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy.",
        ),
        80007 => (
            bad,
            "Rate limit issues",
            "The WhatsApp Business Account has reached its rate limit.",
        ),
        130_429 => (
            bad,
            "Rate limit hit",
            "Cloud API message throughput has been reached.",
        ),
        131_000 => (
            S::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Message failed to send due to an unknown error.",
        ),
        131_008 => (
            bad,
            "Required parameter is missing",
            "The request is missing a required parameter.",
        ),
        131_009 => (
            bad,
            "Parameter value is not valid",
            "One or more parameter values are invalid.",
        ),
        131_016 => (
            S::SERVICE_UNAVAILABLE,
            "Service unavailable",
            "A service is temporarily unavailable.",
        ),
        131_021 => (
            bad,
            "Recipient cannot be sender",
            "Sender and recipient phone number is the same.",
        ),
        131_026 => (
            bad,
            "Message undeliverable",
            "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp phone number; the recipient has not accepted the new Terms of Service; the recipient is using an old WhatsApp version.",
        ),
        131_030 => (
            bad,
            "Recipient phone number not in allowed list",
            "Recipient phone number not in allowed list: Add recipient phone number to recipient list and try again.",
        ),
        131_031 => (
            S::FORBIDDEN,
            "Account has been locked",
            "The WhatsApp Business Account is restricted or disabled for violating a platform policy.",
        ),
        131_042 => (
            bad,
            "Business eligibility payment issue",
            "There was an error related to your payment method.",
        ),
        131_047 => (
            bad,
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        ),
        131_048 => (
            bad,
            "Spam rate limit hit",
            "Message failed to send because there are restrictions on how many messages can be sent from this phone number.",
        ),
        131_049 => (
            bad,
            "Meta chose not to deliver.",
            "This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        131_050 => (
            bad,
            "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business.",
            "The user has stopped receiving marketing messages from this business.",
        ),
        131_051 => (
            bad,
            "Unsupported message type",
            "Message type is currently not supported.",
        ),
        131_052 => (
            bad,
            "Media download error",
            "Unable to download the media sent by the user.",
        ),
        131_053 => (
            bad,
            "Media upload error",
            "Unable to upload the media used in the message.",
        ),
        131_056 => (
            bad,
            "(Business Account, Consumer Account) pair rate limit hit",
            "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time.",
        ),
        131_057 => (
            S::INTERNAL_SERVER_ERROR,
            "Account in maintenance mode",
            "Business Account is in maintenance mode.",
        ),
        131_062 => (
            bad,
            "Business-scoped user ID recipient not supported",
            "This message type cannot be sent to a business-scoped user ID.",
        ),
        132_000 => (
            bad,
            "Number of parameters does not match the expected number of params",
            "The number of variable parameter values included in the request did not match the number of variable parameters defined in the template.",
        ),
        132_001 => (
            S::NOT_FOUND,
            "Template name does not exist in the translation",
            "The template does not exist in the specified language or the template has not been approved.",
        ),
        132_012 => (
            bad,
            "Parameter format does not match format in the created template",
            "Variable parameter values formatted incorrectly.",
        ),
        132_015 => (
            bad,
            "Template is Paused",
            "Template is paused due to low quality so it cannot be sent in a template message.",
        ),
        132_016 => (
            bad,
            "Template is Disabled",
            "Template has been paused too many times due to low quality and is now permanently disabled.",
        ),
        133_010 => (
            bad,
            "Phone number Not Registered",
            "The phone number is not registered on the WhatsApp Business Platform.",
        ),
        _ => return None,
    })
}

/// Graph attaches an opaque trace id to every error; products log it, so it must look real.
fn fbtrace_id() -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(23)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_codes_carry_documented_http_status() {
        for (code, status) in [
            (190, 401),
            (131_030, 400),
            (131_047, 400),
            (130_429, 400),
            (131_000, 500),
            (100, 400),
            (132_001, 404),
        ] {
            assert_eq!(
                GraphError::for_code(code).status.as_u16(),
                status,
                "code {code}"
            );
        }
    }

    #[test]
    fn sync_body_has_meta_shape() {
        let body = GraphError::for_code(131_030).body();
        assert_eq!(body["error"]["code"], 131_030);
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(body["error"]["error_subcode"], 2_655_007);
        assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("(#131030) ")
        );
    }
}
