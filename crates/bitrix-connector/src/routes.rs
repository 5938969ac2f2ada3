//! HTTP surface of the connector. Route table first, handlers below in the same order.

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use switchboard_core::{Core, Incoming, http::request_id_of, http::url_decode_pairs};

use crate::{
    Error,
    bitrix::{
        Bitrix,
        events::receive_bitrix_event,
        install::{install_app, show_install},
    },
    media,
    meta::{payload as meta_payload, signature},
    settings::required_secret,
};

pub const META_WEBHOOK: &str = "/webhook/whatsapp";
pub const BITRIX_EVENTS: &str = "/bitrix/events";
pub const BITRIX_INSTALL: &str = "/bitrix/install";

/// Meta caps notifications at 3 MB (protocol §2.1); leave headroom, refuse beyond.
const META_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// An operator reply's event is a few KiB: the message text (percent-encoded, at most three
/// bytes per byte of text), file names and links, and the `auth` block. 1 MiB still takes a
/// message of a third of a million characters; anything larger is not from Bitrix.
const BITRIX_EVENT_LIMIT: usize = 1024 * 1024;

/// The install and app-page frame POSTs carry a dozen short fields (tokens, endpoint, the
/// placement's options): well under 1 KiB in practice.
const BITRIX_INSTALL_LIMIT: usize = 64 * 1024;

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
            axum::routing::post(receive_bitrix_event)
                .layer(DefaultBodyLimit::max(BITRIX_EVENT_LIMIT)),
        )
        .route(
            BITRIX_INSTALL,
            get(show_install)
                .post(install_app)
                .layer(DefaultBodyLimit::max(BITRIX_INSTALL_LIMIT)),
        )
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
