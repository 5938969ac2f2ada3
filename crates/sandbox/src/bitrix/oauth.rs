//! The OAuth server (`oauth.bitrix.info` in production, protocol §2) and the portal's side of
//! token checking. Refresh tokens rotate: every refresh invalidates the one it consumed, so a
//! product that keeps using an old refresh token (or refreshes twice concurrently) gets
//! `invalid_grant`, as it would in production.

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::php;
use super::state::{AccessToken, Grant, Portal, RefreshState, random_hex};
use super::{Shared, Urls};

/// Authorization codes must be exchanged within 30 s (protocol §2).
const CODE_LIFETIME_SECS: i64 = 30;

pub(crate) async fn issue_token(
    State(s): State<Shared>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // Documented as GET with a query string; a POSTed form is read the same way.
    let mut params = php::parse_form(query.unwrap_or_default().as_bytes());
    if let (Value::Object(into), Value::Object(from)) = (&mut params, php::parse_form(&body)) {
        into.extend(from);
    }
    let text = |name: &str| php::as_text(params.get(name)).unwrap_or_default();
    let mut portal = s.portal();
    if portal.down {
        return super::outage();
    }
    let cfg = &portal.cfg;
    if text("client_id") != cfg.client_id || text("client_secret") != cfg.client_secret {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "Invalid client");
    }
    // Refreshing the app's grant rotates it; refreshing another user's tokens (say, the ones a
    // user's browser got on opening the app) leaves the app's grant alone.
    let (user_id, rotates_app_grant) = match text("grant_type").as_str() {
        "refresh_token" => {
            let token = text("refresh_token");
            match portal.refresh.get(&token) {
                Some(RefreshState::Live) => {
                    let user = portal.refresh_user.get(&token).copied().unwrap_or(1);
                    let current = portal
                        .current
                        .as_ref()
                        .is_some_and(|g| g.refresh_token == token);
                    portal.refresh.insert(token, RefreshState::Used);
                    (user, current)
                }
                _ => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Invalid refresh token",
                    );
                }
            }
        }
        "authorization_code" => {
            let now = portal.now();
            match portal.auth_codes.get_mut(&text("code")) {
                Some((issued, used)) if !*used && now - *issued <= CODE_LIFETIME_SECS => {
                    *used = true;
                    (1, true)
                }
                _ => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Invalid authorization code",
                    );
                }
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Unsupported grant_type",
            );
        }
    };
    let grant = mint_pair(&mut portal, user_id);
    if rotates_app_grant {
        portal.current = Some(grant.clone());
    }
    Json(grant_json(&portal, s.urls(), &grant, user_id)).into_response()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// A fresh access + refresh pair; becomes the portal's current grant.
pub(crate) fn mint_grant(portal: &mut Portal, user_id: u64) -> Grant {
    let grant = mint_pair(portal, user_id);
    portal.current = Some(grant.clone());
    grant
}

/// A fresh access + refresh pair of `user_id`, not the app's grant.
pub(crate) fn mint_pair(portal: &mut Portal, user_id: u64) -> Grant {
    let access_token = mint_access(portal, user_id);
    let refresh_token = random_hex(35);
    portal
        .refresh
        .insert(refresh_token.clone(), RefreshState::Live);
    portal.refresh_user.insert(refresh_token.clone(), user_id);
    Grant {
        expires: portal.access[&access_token].expires_at,
        access_token,
        refresh_token,
        member_id: portal.cfg.member_id.clone(),
        application_token: portal.cfg.application_token.clone(),
    }
}

/// An access token without a refresh token: what events carry for the triggering user.
pub(crate) fn mint_access(portal: &mut Portal, user_id: u64) -> String {
    let token = random_hex(35);
    let expires_at = portal.now() + portal.cfg.access_ttl_secs;
    portal.access.insert(
        token.clone(),
        AccessToken {
            user_id,
            expires_at,
            revoked: false,
        },
    );
    token
}

/// The §2 refresh response body.
pub(crate) fn grant_json(portal: &Portal, urls: &Urls, grant: &Grant, user_id: u64) -> Value {
    json!({
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        "expires": grant.expires,
        "expires_in": portal.cfg.access_ttl_secs,
        "scope": portal.cfg.scope,
        "domain": urls.host,
        "server_endpoint": urls.server_endpoint(),
        "client_endpoint": urls.client_endpoint(),
        "member_id": portal.cfg.member_id,
        "status": "L",
        "user_id": user_id,
    })
}

/// Why the portal refuses a REST token (protocol §8).
pub(crate) enum TokenRefusal {
    Missing,
    Expired,
    Invalid,
}

pub(crate) fn check_access(portal: &Portal, token: Option<&str>) -> Result<u64, TokenRefusal> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(TokenRefusal::Missing)?;
    let record = portal.access.get(token).ok_or(TokenRefusal::Invalid)?;
    if record.revoked {
        return Err(TokenRefusal::Invalid);
    }
    if record.expires_at <= portal.now() {
        return Err(TokenRefusal::Expired);
    }
    Ok(record.user_id)
}

/// Re-install semantics: every token of the previous install stops working (`invalid_token`).
pub(crate) fn revoke_all(portal: &mut Portal) {
    for t in portal.access.values_mut() {
        t.revoked = true;
    }
    for state in portal.refresh.values_mut() {
        *state = RefreshState::Revoked;
    }
    portal.current = None;
}
