//! The admin gate of the pages: the token once (posted by the sign-in form, or `?token=` on a
//! GET), then a session cookie; a CSRF token on every POST.
//!
//! The cookie is stateless so any process of a scale-out deployment accepts it:
//! `<session id>.<issued unix secs>.<HMAC-SHA256(admin token, "session|id|issued")>`. Changing
//! `SWITCHBOARD_ADMIN_TOKEN` therefore signs every session out. The CSRF token is another HMAC
//! of the same session, so it needs no storage either, and differs per session.
//!
//! The JSON API's bearer / `?token=` gate ([`crate::http::AdminAuth`]) is separate and unchanged.

use axum::{
    body::Bytes,
    extract::{FromRequestParts, State},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{OpsState, layout};
use crate::secret::{Secret, constant_time_eq};

pub(super) const COOKIE: &str = "switchboard_admin";

/// How long a sign-in lasts. A working day: the operator re-opens with the token after that.
const LIFETIME_SECS: i64 = 12 * 3600;

/// Form field that carries the CSRF token.
pub(super) const CSRF_FIELD: &str = "csrf";

/// A signed-in operator. Pages put [`AdminSession::csrf`] in every form.
pub(super) struct AdminSession {
    csrf: String,
}

impl AdminSession {
    pub(super) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Refuses a POST whose form lacks this session's CSRF token (403).
    pub(super) fn verify_csrf(&self, fields: &[(String, String)]) -> Result<(), Response> {
        let presented = fields
            .iter()
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.as_str());
        match presented {
            Some(t) if constant_time_eq(t.as_bytes(), self.csrf.as_bytes()) => Ok(()),
            Some(_) => Err(layout::forbidden(
                "The form's security token is wrong or from an older sign-in.",
            )),
            None => Err(layout::forbidden("The form's security token is missing.")),
        }
    }
}

fn mac(key: &Secret, parts: &[&str]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    m.update(parts.join("|").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn issue(key: &Secret, now: i64) -> String {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let issued = now.to_string();
    let sig = mac(key, &["session", &id, &issued]);
    format!("{id}.{issued}.{sig}")
}

/// The CSRF token of a valid cookie value, or `None` when the cookie is forged or expired.
fn validate(key: &Secret, cookie: &str, now: i64) -> Option<String> {
    let mut it = cookie.split('.');
    let (Some(id), Some(issued), Some(sig), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    let expected = mac(key, &["session", id, issued]);
    if !constant_time_eq(sig.as_bytes(), expected.as_bytes()) {
        return None;
    }
    let at: i64 = issued.parse().ok()?;
    if now < at - 60 || now > at + LIFETIME_SECS {
        return None;
    }
    Some(mac(key, &["csrf", id, issued])[..32].to_string())
}

fn cookie_value(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn now_secs() -> i64 {
    crate::db::now_ms() / 1000
}

impl FromRequestParts<OpsState> for AdminSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &OpsState) -> Result<Self, Response> {
        let Some(key) = s.core.config.admin_token() else {
            return Err(layout::admin_unconfigured());
        };
        let path = parts.uri.path().to_string();
        let pairs = parts
            .uri
            .query()
            .map(crate::http::url_decode_pairs)
            .unwrap_or_default();
        // `?token=` is honoured on GET only: a POST must come from a form with a CSRF token.
        if parts.method == Method::GET
            && let Some((_, presented)) = pairs.iter().find(|(k, _)| k == "token")
        {
            if !key.matches(presented) {
                return Err(layout::login_required(&path, "That admin token is wrong."));
            }
            let rest: Vec<_> = pairs.iter().filter(|(k, _)| k != "token").collect();
            let location = if rest.is_empty() {
                path
            } else {
                let q = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(rest)
                    .finish();
                format!("{path}?{q}")
            };
            return Err(sign_in(s, &key, &location));
        }
        match cookie_value(parts).and_then(|c| validate(&key, c, now_secs())) {
            Some(csrf) => Ok(AdminSession { csrf }),
            None => Err(layout::login_required(
                &path,
                "This page needs the admin token. Enter it once; a session cookie keeps you signed in.",
            )),
        }
    }
}

/// `POST /admin/sign-in`, the sign-in form: the token comes in the body, so unlike `?token=` it
/// never appears in a URL (proxy access logs, browser history). `next` is where to go after.
pub(super) async fn sign_in_form(State(s): State<OpsState>, body: Bytes) -> Response {
    let Some(key) = s.core.config.admin_token() else {
        return layout::admin_unconfigured();
    };
    let fields = crate::http::url_decode_pairs(&String::from_utf8_lossy(&body));
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // Only a path on this site: never a redirect elsewhere.
    let next = field("next")
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/setup");
    match field("token") {
        Some(t) if key.matches(t) => sign_in(&s, &key, next),
        _ => layout::login_required(next, "That admin token is wrong."),
    }
}

/// Sets the session cookie and sends the browser to `location`, so the token leaves the
/// address bar and the history entry at once.
fn sign_in(s: &OpsState, key: &Secret, location: &str) -> Response {
    let secure = if s.core.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}",
        issue(key, now_secs())
    );
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A 303 back to a page after a POST, so reloading doesn't submit again.
pub(super) fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_signed_and_expire() {
        let key = Secret::new("admin-token");
        let c = issue(&key, 1_000_000);
        let csrf = validate(&key, &c, 1_000_010).expect("fresh cookie is valid");
        assert_eq!(csrf.len(), 32);
        assert_eq!(validate(&key, &c, 1_000_020), Some(csrf.clone()));
        assert_eq!(validate(&key, &c, 1_000_000 + LIFETIME_SECS + 1), None);
        assert_eq!(validate(&Secret::new("other-token"), &c, 1_000_010), None);
        let tampered = c.replacen("1000000", "1000001", 1);
        assert_eq!(validate(&key, &tampered, 1_000_010), None);
        assert_eq!(validate(&key, "garbage", 1_000_010), None);
        let other = issue(&key, 1_000_000);
        assert_ne!(validate(&key, &other, 1_000_010), Some(csrf));
    }
}
