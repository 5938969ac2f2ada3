//! HTTP surface of the connector. Route table first, handlers below in the same order.

use crate::{
    Error,
    bitrix::install::{install_app, show_install},
    media,
    relay::Relay,
    templates,
    to_bitrix::receive::{receive_meta_webhook, verify_meta_subscription},
    to_whatsapp::receive::receive_bitrix_event,
};
use axum::{
    Router,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
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

/// A write-first request names a number, a template and its values: a few KiB at most.
const CONVERSATION_LIMIT: usize = 64 * 1024;

pub fn router(relay: &Relay) -> Router {
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
        .route(
            templates::api::TEMPLATES,
            get(templates::api::list_templates),
        )
        .route(
            templates::api::TEMPLATES_SYNC,
            axum::routing::post(templates::api::sync_templates),
        )
        .route(
            templates::api::CONVERSATIONS,
            axum::routing::post(templates::api::start_conversation)
                .layer(DefaultBodyLimit::max(CONVERSATION_LIMIT)),
        )
        .with_state(relay.clone())
}

/// What a browser may do with a copy opened straight from `/media/{id}`: nothing active. The
/// sandbox gives it an opaque origin (no cookies, no reading the admin pages), `default-src
/// 'none'` loads nothing beyond the file itself.
const MEDIA_CSP: &str = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; \
                         style-src 'unsafe-inline'; frame-ancestors 'none'";

/// Re-hosted media (unguessable id, expires). Served without auth: the id is the capability.
/// Served on the admin pages' origin, so see [`media::served_as`] for what may render.
async fn serve_media(State(s): State<Relay>, Path(id): Path<String>) -> Result<Response, Error> {
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
