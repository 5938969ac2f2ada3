//! `/webhook/whatsapp`: Meta's subscription handshake and its notifications, each verified
//! and stored before the 200; nothing is relayed while Meta waits for the answer.

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use switchboard_core::{Incoming, http::request_id_of, http::url_decode_pairs};

use crate::{
    Error,
    meta::{payload as meta_payload, signature},
    relay::META_SOURCE,
    relay::Relay,
    routes::META_WEBHOOK,
    setting_values::required_secret,
};

/// Meta's one-time handshake (protocol §1): echo `hub.challenge` as plain text.
pub async fn verify_meta_subscription(
    State(s): State<Relay>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let expected = required_secret(&s.core, crate::catalogue::META_VERIFY_TOKEN).await?;
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

/// Inbound notifications: verify, persist, 200. Processing happens in the `meta` processor
/// ([`super::split`]).
pub async fn receive_meta_webhook(
    State(s): State<Relay>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let request_id = request_id_of(&headers);
    let incoming = || Incoming::new(&request_id, META_SOURCE, META_WEBHOOK, &body, &headers);
    let secret = match required_secret(&s.core, crate::catalogue::META_APP_SECRET).await {
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
