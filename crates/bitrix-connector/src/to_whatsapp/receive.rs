//! `POST /bitrix/events` (protocol §5): Bitrix posts each event once and never retries, so the
//! handler authenticates, persists and answers; the `bitrix` processor does the rest.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use switchboard_core::{Incoming, Secret, http::request_id_of};

use crate::{
    Error,
    bitrix::{events, oauth, php_form},
    error::fix,
    relay::BITRIX_SOURCE,
    relay::Relay,
    routes::BITRIX_EVENTS,
};

pub async fn receive_bitrix_event(
    State(s): State<Relay>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let request_id = request_id_of(&headers);
    // Read off the raw body: nothing is parsed before the sender is known.
    let [event, presented, placement, auth_id] = php_form::fields(
        &body,
        ["event", "auth[application_token]", "PLACEMENT", "AUTH_ID"],
    );
    let Some(event) = event
        .filter(|e| !e.is_empty())
        .map(|e| e.to_ascii_uppercase())
    else {
        // The app's page opened inside Bitrix (protocol §1): the frame's POST, not an event.
        if placement.is_some() && auth_id.is_some() {
            return Ok(
                Html("<!doctype html><h1>Switchboard WhatsApp bridge</h1><p>Running.</p>")
                    .into_response(),
            );
        }
        return Err(Error::BadRequest(
            "not a Bitrix24 event (no `event`) nor the app's page opened in Bitrix24 (no PLACEMENT and AUTH_ID)".into(),
        ));
    };
    // Kept without the tokens it carries: the processor reads only `data`.
    let stored = php_form::without_secrets(&body);
    let incoming = || Incoming::new(&request_id, BITRIX_SOURCE, BITRIX_EVENTS, &stored, &headers);
    if let Err(why) = authenticate(&s, presented.as_deref().unwrap_or("")).await {
        s.core
            .inbox
            .record(incoming().rejected(why.clone()))
            .await?;
        return Err(Error::Forbidden(why));
    }
    if !events::HANDLED.iter().any(|(name, _)| *name == event) {
        s.core
            .inbox
            .record(incoming().skipped(format!("event {event} is not relayed")))
            .await?;
        return Ok(StatusCode::OK.into_response());
    }
    let form = match php_form::parse(&stored) {
        Ok(form) => form,
        Err(why) => {
            s.core
                .inbox
                .record(incoming().rejected(why.clone()))
                .await?;
            return Err(Error::BadRequest(why));
        }
    };
    let msgs = events::messages(&form);
    // One message (the norm): its id, so a second delivery shows as `duplicate`. Several: the
    // body's hash; the processor dedupes each message on its id anyway.
    // Other events by their bytes: an edit of a message is not its first delivery.
    let key = match msgs.as_slice() {
        [m] if event == events::MESSAGE_ADD => format!("message:{}", m.message_id),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(&stored))),
    };
    s.core.inbox.record(incoming().dedupe(key)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `auth[application_token]` against `bitrix.application_token` when it is set, else against the
/// token the verified install stored with the grant; constant time. An event never supplies
/// the token: its `member_id` and everything else in it are no secret.
async fn authenticate(s: &Relay, presented: &str) -> Result<(), String> {
    let configured = s
        .core
        .settings
        .secret(crate::catalogue::BITRIX_APPLICATION_TOKEN)
        .await
        .map_err(|e| e.to_string())?
        .filter(|t| !t.expose().is_empty());
    let expected = match configured {
        Some(token) => token,
        None => {
            let grant = oauth::load(&s.core).await.map_err(|e| e.explained())?;
            match grant
                .and_then(|g| g.application_token)
                .filter(|t| !t.is_empty())
            {
                Some(token) => Secret::new(token),
                None => {
                    return Err(format!(
                        "no application token is known. {}",
                        fix::NO_APPLICATION_TOKEN
                    ));
                }
            }
        }
    };
    if !presented.is_empty() && expected.matches(presented) {
        Ok(())
    } else {
        Err(format!(
            "auth[application_token] does not match. {}",
            fix::APPLICATION_TOKEN
        ))
    }
}
