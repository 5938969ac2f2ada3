//! HTTP pieces every bridge shares: the one JSON error shape, a JSON extractor whose rejection
//! names the field, the request id, and the admin-token gate.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, HeaderName, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::secret::Secret;

/// The product's one error shape, as `/openapi.json` describes it. [`error_body`] writes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words meant for the caller.
    pub error: String,
    /// The field, setting or parameter to fix, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `{"error": "...", "field": "..."}` with `status`. Every error body in the product has this
/// shape, so a caller parses one thing.
pub fn error_body(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    let body = match field {
        Some(f) => json!({ "error": message, "field": f }),
        None => json!({ "error": message }),
    };
    (status, axum::Json(body)).into_response()
}

/// Attached to 5xx responses so the trace layer logs the real cause once, inside the request
/// span, while the body says only "internal error".
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

pub fn internal_error(cause: impl std::fmt::Display) -> Response {
    let mut resp = error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None);
    resp.extensions_mut().insert(ErrorCause(cause.to_string()));
    resp
}

/// JSON body extractor whose rejection is the product's 400 body, naming the bad field when
/// serde can tell which one it was.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    error_body(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                        None,
                    )
                } else {
                    error_body(StatusCode::BAD_REQUEST, &e.body_text(), None)
                }
            })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses JSON, mapping serde's message to `{"error", "field"}`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Response> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error_lite(de).map_err(|(path, msg)| {
        error_body(
            StatusCode::BAD_REQUEST,
            &msg,
            if path.is_empty() { None } else { Some(&path) },
        )
    })
}

/// serde_json reports "missing field `x`" / "invalid type ... at line" without a path; pull
/// the field name out of the message so callers see which field to fix.
fn serde_path_to_error_lite<T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<T, (String, String)> {
    match T::deserialize(&mut *de).and_then(|v| de.end().map(|_| v)) {
        Ok(v) => Ok(v),
        Err(e) => {
            let msg = e.to_string();
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.starts_with("missing field") || msg.starts_with("unknown field"))
                .map(str::to_string)
                .unwrap_or_default();
            let clean = msg.split(" at line").next().unwrap_or(&msg).to_string();
            Err((field, clean))
        }
    }
}

/// Query-string extractor whose rejection is the product's 400 body (axum's own answers in
/// plain text): `?retried=abc` or a parameter given twice is the caller's mistake, said in JSON.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| error_body(StatusCode::BAD_REQUEST, &e.body_text(), None))
    }
}

/// The request id set by the binary's `SetRequestIdLayer` (or given by the caller).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(request_id_of(&parts.headers)))
    }
}

pub fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The most of one header value the audit log keeps: ample for a user agent or a signature.
pub const AUDIT_HEADER_BYTES: usize = 512;

/// Headers worth keeping in the audit log, as the JSON object text the audit row stores.
/// Anything carrying a credential is left out, so the audit log can be shown on a page without
/// redaction. Each value is cut to [`AUDIT_HEADER_BYTES`]: refused calls are stored too, and
/// their senders choose the headers. Written straight to text: this runs on every webhook's
/// ack path.
pub fn audit_headers(headers: &HeaderMap) -> String {
    // Sorted, so the text is the same object serde_json would print. Names built at compile
    // time: looking a header up by `&str` parses and hashes the name on every call.
    const KEEP: [HeaderName; 5] = [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::USER_AGENT,
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-hub-signature-256"),
    ];
    let mut json = Vec::with_capacity(96);
    json.push(b'{');
    for name in KEEP {
        if let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok()) {
            // Visible ASCII (what `to_str` accepts): any byte is a character boundary.
            let v = &v[..v.len().min(AUDIT_HEADER_BYTES)];
            if json.len() > 1 {
                json.push(b',');
            }
            json.push(b'"');
            json.extend_from_slice(name.as_str().as_bytes());
            json.extend_from_slice(b"\":");
            serde_json::to_writer(&mut json, v).expect("writing a string to a Vec cannot fail");
        }
    }
    json.push(b'}');
    String::from_utf8(json).expect("JSON text is UTF-8")
}

/// Checks a bearer token or `?token=` against `SWITCHBOARD_ADMIN_TOKEN` (the JSON API's gate;
/// the HTML pages use the session cookie of `ops::session` instead).
/// 503 while no admin token is configured (SPEC §1.1), 401 when the token is wrong.
pub fn check_admin(
    expected: Option<&Secret>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), Response> {
    let Some(expected) = expected else {
        return Err(error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "SWITCHBOARD_ADMIN_TOKEN is not configured",
            Some("SWITCHBOARD_ADMIN_TOKEN"),
        ));
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = query.and_then(|q| {
        form_pairs(q)
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
    });
    let presented = bearer.map(str::to_string).or(from_query);
    match presented {
        Some(t) if expected.matches(&t) => Ok(()),
        _ => Err(error_body(
            StatusCode::UNAUTHORIZED,
            "admin token missing or wrong",
            None,
        )),
    }
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    url_decode_pairs(q)
}

/// Decodes `a=b&c=d` (percent and `+` decoding).
pub fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// Admin gate as an extractor for JSON API handlers that hold [`crate::Core`] in state.
pub struct AdminAuth;

impl FromRequestParts<crate::Core> for AdminAuth {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        core: &crate::Core,
    ) -> Result<Self, Self::Rejection> {
        check_admin(
            core.config.admin_token().as_ref(),
            &parts.headers,
            parts.uri.query(),
        )?;
        Ok(AdminAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        api_key: String,
        n: u32,
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<Req>(br#"{"n": 1}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err = parse_json::<Req>(b"not json").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn audit_headers_are_the_kept_ones_as_a_json_object() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("user-agent", "a \"quoted\" agent".parse().unwrap());
        let text = audit_headers(&h);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            json!({"content-type": "application/json", "user-agent": "a \"quoted\" agent"})
        );
        assert!(!text.contains("secret"));
        assert_eq!(audit_headers(&HeaderMap::new()), "{}");

        // A sender's outsized header is cut, not stored whole.
        h.insert("user-agent", "u".repeat(60_000).parse().unwrap());
        let v: serde_json::Value = serde_json::from_str(&audit_headers(&h)).unwrap();
        assert_eq!(v["user-agent"].as_str().unwrap().len(), AUDIT_HEADER_BYTES);
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            url_decode_pairs("token=a%20b+c&x=%zz"),
            vec![("token".into(), "a b c".into()), ("x".into(), "%zz".into())]
        );
    }
}
