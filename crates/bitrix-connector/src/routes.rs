//! HTTP surface of the connector. Route table first, handlers below in the same order.

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::Value;
use switchboard_core::{Core, Incoming, http::request_id_of, http::url_decode_pairs};

use crate::{
    Error,
    bitrix::{Bitrix, Grant, oauth},
    media, meta_payload, php_form,
    settings::{required, required_secret},
    signature,
};

pub const META_WEBHOOK: &str = "/webhook/whatsapp";
pub const BITRIX_EVENTS: &str = "/bitrix/events";
pub const BITRIX_INSTALL: &str = "/bitrix/install";

/// Meta caps notifications at 3 MB (protocol §2.1); leave headroom, refuse beyond.
const META_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct BridgeState {
    pub core: Core,
    pub bitrix: Bitrix,
}

pub fn router(core: &Core) -> Router {
    let state = BridgeState {
        core: core.clone(),
        bitrix: Bitrix::new(core),
    };
    Router::new()
        .route(
            META_WEBHOOK,
            get(verify_meta_subscription)
                .post(receive_meta_webhook)
                .layer(DefaultBodyLimit::max(META_BODY_LIMIT)),
        )
        .route(
            BITRIX_EVENTS,
            axum::routing::post(crate::events::receive_bitrix_event),
        )
        .route(BITRIX_INSTALL, get(show_install).post(install_app))
        .route("/media/{id}", get(serve_media))
        .with_state(state)
}

/// Meta's one-time handshake (protocol §1): echo `hub.challenge` as plain text.
async fn verify_meta_subscription(
    State(s): State<BridgeState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let expected = required_secret(&s.core, "meta.verify_token").await?;
    let params = url_decode_pairs(query.as_deref().unwrap_or(""));
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let token_ok = get("hub.verify_token").is_some_and(|t| expected.matches(t));
    match (get("hub.mode"), get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if token_ok => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge.to_string(),
        )
            .into_response()),
        _ => Err(Error::Forbidden(
            "hub.verify_token does not match meta.verify_token".into(),
        )),
    }
}

/// Inbound notifications: verify, persist, 200. Processing happens in the `meta` processor.
async fn receive_meta_webhook(
    State(s): State<BridgeState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let request_id = request_id_of(&headers);
    let incoming = || Incoming::new(&request_id, "meta", META_WEBHOOK, &body, &headers);
    let secret = match required_secret(&s.core, "meta.app_secret").await {
        Ok(secret) => secret,
        Err(e) => {
            s.core
                .inbox
                .record(incoming().rejected(e.to_string()))
                .await?;
            return Err(e);
        }
    };
    let presented = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature::verify(secret.expose(), presented, &body) {
        s.core
            .inbox
            .record(incoming().rejected("X-Hub-Signature-256 missing or wrong"))
            .await?;
        return Err(Error::BadSignature);
    }
    let envelope = match meta_payload::parse(&body) {
        Ok(env) => env,
        Err(why) => {
            s.core
                .inbox
                .record(incoming().rejected(why.clone()))
                .await?;
            return Err(Error::BadRequest(why));
        }
    };
    let key = meta_payload::envelope_key(&meta_payload::units(&envelope), &body);
    // Meta retries for days on anything but 200: answer only after the commit.
    s.core.inbox.record(incoming().dedupe(key)).await?;
    Ok(StatusCode::OK)
}

async fn show_install() -> Html<&'static str> {
    Html(
        "<!doctype html><title>Switchboard</title><h1>Bitrix24 install handler</h1>\
         <p>Install the local application from inside Bitrix24; the portal posts the grant here \
         by itself. You don't need to open this page.</p>",
    )
}

/// The install POST (protocol §1), in either mode: script-only `ONAPPINSTALL`, or the
/// UI iframe, whose page must call `BX24.installFinish()` or the install never completes.
async fn install_app(
    State(s): State<BridgeState>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, Error> {
    let form = php_form::parse(&body);
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
    accept_grant(&s, &grant).await?;
    tracing::info!(member_id = %grant.member_id, ui = with_ui, "Bitrix24 app installed; grant stored");
    Ok(installed_page(with_ui).into_response())
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

/// Anyone can POST to the install URL, so a grant is kept only if it is for the configured
/// portal and the portal itself accepts its token.
async fn accept_grant(s: &BridgeState, grant: &Grant) -> Result<(), Error> {
    let portal = required(&s.core, "bitrix.portal_url").await?;
    let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
    if origin(&portal).is_none() || origin(&portal) != origin(&grant.client_endpoint) {
        return Err(Error::Forbidden(
            "this install is for a different portal than bitrix.portal_url".into(),
        ));
    }
    if let Err(e) = s
        .bitrix
        .call_with(grant, "app.info", &serde_json::json!({}))
        .await
    {
        return Err(if e.is_retryable() {
            Error::Internal(format!("could not verify the grant: {e}"))
        } else {
            Error::Forbidden(format!("the portal refused the install's token: {e}"))
        });
    }
    oauth::store(&s.core, grant).await.map_err(|e| match e {
        crate::bitrix::BitrixError::Storage(m) => Error::Internal(m),
        other => Error::Internal(other.to_string()),
    })
}

fn installed_page(with_ui: bool) -> Html<String> {
    let finish = if with_ui {
        // Without this call Bitrix keeps the app half-installed: no events, no placements.
        r#"<script src="https://api.bitrix24.com/api/v1/"></script>
<script>BX24.init(function () { BX24.installFinish(); });</script>"#
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>WhatsApp bridge installed</title>{finish}</head>\
         <body><h1>WhatsApp bridge installed</h1><p>The OAuth grant is stored encrypted. Next: \
         <code>switchboard bitrix register-connector</code>, bind the connector to an Open Channel, then \
         <code>switchboard bitrix activate-connector --line ID</code>.</p></body></html>"
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

/// What a browser may do with a copy opened straight from `/media/{id}`: nothing active. The
/// sandbox gives it an opaque origin (no cookies, no reading the admin pages), `default-src
/// 'none'` loads nothing beyond the file itself.
const MEDIA_CSP: &str = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; \
                         style-src 'unsafe-inline'; frame-ancestors 'none'";

/// Re-hosted media (unguessable id, expires). Served without auth: the id is the capability.
/// Served on the admin pages' origin, so see [`media::served_as`] for what may render.
async fn serve_media(
    State(s): State<BridgeState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::NotFound);
    }
    let m = media::get(&s.core.db, &id).await?.ok_or(Error::NotFound)?;
    let served = media::served_as(&m.mime);
    let disposition = content_disposition(served.inline, &m.filename);
    let disposition =
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static(if served.inline {
            "inline"
        } else {
            "attachment"
        }));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(served.content_type),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(MEDIA_CSP),
            ),
        ],
        m.bytes,
    )
        .into_response())
}

/// `inline|attachment; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
fn content_disposition(inline: bool, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_disposition_is_header_safe() {
        let v = super::content_disposition(false, "Rechnung ü\"1.pdf");
        assert!(v.starts_with("attachment; "));
        assert!(v.is_ascii());
        assert!(v.contains("filename=\"Rechnung _1.pdf\""));
        assert!(v.contains("Rechnung%20%C3%BC%221.pdf"));
    }
}
