//! The install handler: Bitrix24 posts the app's OAuth grant to `/bitrix/install` when an
//! administrator installs the local application, and opens the connector's settings slider
//! there. The posted grant is only a claim until the OAuth server and the portal confirm it.

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    response::{Html, IntoResponse, Response},
};
use serde_json::Value;
use switchboard_core::http::url_decode_pairs;

use crate::{
    Error,
    bitrix::{Grant, oauth, php_form},
    relay::Relay,
    setting_values::required,
};

pub async fn show_install() -> Html<&'static str> {
    Html(
        "<!doctype html><title>Switchboard</title><h1>Bitrix24 install handler</h1>\
         <p>Install the local application from inside Bitrix24; the portal posts the grant here \
         by itself. You don't need to open this page.</p>",
    )
}

/// The install POST (protocol §1), in either mode: script-only `ONAPPINSTALL`, or the
/// UI iframe, whose page must call `BX24.installFinish()` or the install never completes.
pub async fn install_app(
    State(s): State<Relay>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, Error> {
    let form = php_form::parse(&body).map_err(Error::BadRequest)?;
    let query = url_decode_pairs(query.as_deref().unwrap_or(""));
    let q = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let t = |path: &[&str]| php_form::text(&form, path).map(str::to_string);
    if t(&["PLACEMENT"]).as_deref() == Some("SETTING_CONNECTOR") {
        return Ok(connector_settings_page(&form).into_response());
    }
    let (grant, with_ui) = if t(&["event"]).as_deref() == Some("ONAPPINSTALL") {
        (grant_from_event(&form)?, false)
    } else if t(&["AUTH_ID"]).is_some() && t(&["REFRESH_ID"]).is_some() {
        let scheme = if q("PROTOCOL").as_deref() == Some("0") {
            "http"
        } else {
            "https"
        };
        let domain = q("DOMAIN").ok_or_else(|| Error::BadRequest("DOMAIN is missing".into()))?;
        let expires_in: i64 = t(&["AUTH_EXPIRES"])
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600);
        let grant = Grant {
            access_token: t(&["AUTH_ID"]).unwrap_or_default(),
            refresh_token: t(&["REFRESH_ID"]).unwrap_or_default(),
            expires_at: oauth::now_secs() + expires_in,
            member_id: t(&["member_id"]).unwrap_or_default(),
            client_endpoint: format!("{scheme}://{domain}/rest/"),
            domain: Some(domain),
            application_token: t(&["APPLICATION_TOKEN"]),
            issued_at: oauth::now_secs(),
        };
        (grant, true)
    } else {
        return Err(Error::BadRequest(
            "not a Bitrix24 install request (no ONAPPINSTALL event, no AUTH_ID/REFRESH_ID)".into(),
        ));
    };
    let grant = accept_grant(&s, &grant).await?;
    tracing::info!(member_id = %grant.member_id, ui = with_ui, "Bitrix24 app installed; grant verified and stored");
    // The connector needs the grant and nothing the operator chooses, so it is registered now;
    // a failure only leaves the /setup button to press.
    let registered = match crate::commands::register_connector(&s, false).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "registering the connector right after the install failed; /setup offers it again");
            false
        }
    };
    s.probes.clear().await;
    Ok(installed_page(with_ui, registered).into_response())
}

fn grant_from_event(form: &Value) -> Result<Grant, Error> {
    let a = |k: &str| php_form::text(form, &["auth", k]).map(str::to_string);
    let missing = |k: &str| Error::BadRequest(format!("auth[{k}] is missing"));
    let expires_in: i64 = a("expires_in").and_then(|v| v.parse().ok()).unwrap_or(3600);
    Ok(Grant {
        access_token: a("access_token").ok_or_else(|| missing("access_token"))?,
        refresh_token: a("refresh_token").ok_or_else(|| missing("refresh_token"))?,
        expires_at: oauth::now_secs() + expires_in,
        member_id: a("member_id").ok_or_else(|| missing("member_id"))?,
        client_endpoint: a("client_endpoint").ok_or_else(|| missing("client_endpoint"))?,
        domain: a("domain"),
        application_token: a("application_token"),
        issued_at: oauth::now_secs(),
    })
}

/// Anyone can POST to the install URL, and any user who opens the app gets tokens of it, so the
/// posted grant is only a claim. It is kept when the OAuth server accepts its refresh token with
/// this app's client secret (the new pair it returns is what gets stored: refresh tokens
/// rotate), the OAuth server names the configured portal and the same `member_id` as the grant
/// already stored for it, and the installing user is a portal administrator.
async fn accept_grant(s: &Relay, posted: &Grant) -> Result<Grant, Error> {
    let portal = required(&s.core, crate::catalogue::BITRIX_PORTAL_URL).await?;
    let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
    let other_portal =
        || Error::Forbidden("this install is for a different portal than bitrix.portal_url".into());
    // Cheap refusal first: no call to the OAuth server for a form naming another portal.
    if origin(&portal).is_none() || origin(&portal) != origin(&posted.client_endpoint) {
        return Err(other_portal());
    }
    let answer = oauth::redeem(&s.core, &posted.refresh_token)
        .await
        .map_err(|e| unverified(e, "the OAuth server refused the install's refresh token"))?;
    let mut grant = oauth::grant_from_install(&answer)
        .map_err(|e| Error::Forbidden(format!("the OAuth server's answer is incomplete: {e}")))?;
    if origin(&portal) != origin(&grant.client_endpoint) {
        return Err(other_portal());
    }
    if !posted.member_id.is_empty() && posted.member_id != grant.member_id {
        return Err(Error::Forbidden(
            "the install's member_id is not the one the OAuth server gives for its token".into(),
        ));
    }
    let stored = oauth::load(&s.core)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    // A grant left from a portal that is no longer bitrix.portal_url may be replaced.
    if let Some(stored) = stored
        && stored.member_id != grant.member_id
        && origin(&stored.client_endpoint) == origin(&portal)
    {
        return Err(Error::Forbidden(format!(
            "a grant for another Bitrix24 portal (member_id {}) is stored; this install is for member_id {}. {}",
            stored.member_id,
            grant.member_id,
            crate::fix::OTHER_PORTAL
        )));
    }
    let admin = s
        .bitrix
        .call_with(&grant, "user.admin", &serde_json::json!({}))
        .await
        .map_err(|e| unverified(e, "the portal refused the install's token"))?;
    if !crate::bitrix::truthy(Some(&admin)) {
        return Err(Error::Forbidden(format!(
            "the install was not made by a Bitrix24 administrator. {}",
            crate::fix::INSTALL_AS_ADMIN
        )));
    }
    grant.application_token = posted.application_token.clone().filter(|t| !t.is_empty());
    // The portal's host as the OAuth server gave it (the answer's own `domain` is the OAuth
    // server's), not the form's.
    grant.domain = reqwest::Url::parse(&grant.client_endpoint)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(u.port().map_or(host.clone(), |p| format!("{host}:{p}")))
        });
    oauth::store(&s.core, &grant)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    s.bitrix.oauth.forget();
    Ok(grant)
}

/// An install that could not be verified: 403 when it was refused, 500 when the OAuth server
/// or the portal could not be asked (installing again later may work).
fn unverified(e: crate::bitrix::BitrixError, refused: &str) -> Error {
    match e {
        crate::bitrix::BitrixError::NotConfigured(setting) => Error::NotConfigured { setting },
        e if e.is_retryable() => Error::Internal(format!("could not verify the install: {e}")),
        e => Error::Forbidden(format!("{refused}: {e}")),
    }
}

fn installed_page(with_ui: bool, registered: bool) -> Html<String> {
    let finish = if with_ui {
        // Without this call Bitrix keeps the app half-installed: no events, no placements.
        r#"<script src="https://api.bitrix24.com/api/v1/"></script>
<script>BX24.init(function () { BX24.installFinish(); });</script>"#
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>WhatsApp bridge installed</title>{finish}</head>\
         <body><h1>WhatsApp bridge installed</h1><p>The OAuth grant is stored encrypted{}. Next: \
         open Switchboard's setup checklist (/setup) to pick the Open Channel line and finish the \
         Meta steps.</p></body></html>",
        if registered {
            " and the WhatsApp connector is registered"
        } else {
            "; registering the connector failed, so /setup offers it as a button"
        }
    ))
}

/// The Contact Center "Connect" slider (placement `SETTING_CONNECTOR`, protocol §4.2).
fn connector_settings_page(form: &Value) -> Html<String> {
    let options: Value = php_form::text(form, &["PLACEMENT_OPTIONS"])
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(Value::Null);
    let line = crate::bitrix::id_text(options.get("LINE")).unwrap_or_else(|| "ID".into());
    let line: String = line.chars().filter(char::is_ascii_digit).collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>WhatsApp connector</title></head>\
         <body><h1>WhatsApp connector</h1><p>Save <b>{line}</b> as the Open Channel (LINE) ID in the \
         credentials form, then run <code>switchboard bitrix activate-connector --line {line}</code>.</p></body></html>"
    ))
}
