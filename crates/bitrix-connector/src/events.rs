//! `POST /bitrix/events` (protocol §5): Bitrix posts each event once and never retries, so the
//! handler authenticates, persists and answers; the `bitrix` processor does the rest.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_core::{Incoming, Secret, http::request_id_of};

use crate::{
    Error,
    bitrix::{id_text, oauth},
    error::fix,
    php_form,
    routes::{BITRIX_EVENTS, BridgeState},
};

pub const MESSAGE_ADD: &str = "ONIMCONNECTORMESSAGEADD";

/// One operator message of an `OnImConnectorMessageAdd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperatorMessage {
    pub chat_id: String,
    pub message_id: String,
    /// Our `chat.id`: the customer's wa_id.
    pub customer: String,
    pub text: String,
    pub files: Vec<OperatorFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperatorFile {
    pub name: String,
    /// `image`, `file`, `audio`, `video`.
    pub kind: String,
    /// As the event gave it: only ever fetched through `portal_file`.
    pub link: String,
}

/// Every message in the event, in index order; incomplete ones are left out.
pub fn messages(form: &Value) -> Vec<OperatorMessage> {
    php_form::items(form.pointer("/data/MESSAGES"))
        .into_iter()
        .filter_map(|m| {
            let files = php_form::items(m.pointer("/message/files"))
                .into_iter()
                .filter_map(|f| {
                    Some(OperatorFile {
                        name: php_form::text(f, &["name"]).unwrap_or("file").to_string(),
                        kind: php_form::text(f, &["type"]).unwrap_or("file").to_string(),
                        // Newer portals may send only a (relative) `downloadLink`.
                        link: php_form::text(f, &["link"])
                            .or_else(|| php_form::text(f, &["downloadLink"]))?
                            .to_string(),
                    })
                })
                .collect();
            Some(OperatorMessage {
                chat_id: id_text(m.pointer("/im/chat_id"))?,
                message_id: id_text(m.pointer("/im/message_id"))?,
                customer: id_text(m.pointer("/chat/id"))?,
                text: php_form::text(m, &["message", "text"])
                    .unwrap_or("")
                    .to_string(),
                files,
            })
        })
        .collect()
}

pub async fn receive_bitrix_event(
    State(s): State<BridgeState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let request_id = request_id_of(&headers);
    let incoming = || Incoming::new(&request_id, "bitrix", BITRIX_EVENTS, &body, &headers);
    let form = php_form::parse(&body);
    let Some(event) = php_form::text(&form, &["event"]).map(str::to_ascii_uppercase) else {
        // The app's handler page opened inside Bitrix (PLACEMENT=DEFAULT): not an event.
        return Ok(
            Html("<!doctype html><h1>Switchboard WhatsApp bridge</h1><p>Running.</p>")
                .into_response(),
        );
    };
    if let Err(why) = authenticate(&s, &form).await {
        s.core
            .inbox
            .record(incoming().rejected(why.clone()))
            .await?;
        return Err(Error::Forbidden(why));
    }
    if event != MESSAGE_ADD {
        s.core
            .inbox
            .record(incoming().skipped(format!("event {event} is not relayed")))
            .await?;
        return Ok(StatusCode::OK.into_response());
    }
    let msgs = messages(&form);
    // One message (the norm): its id, so a second delivery shows as `duplicate`. Several: the
    // body's hash; the processor dedupes each message on its id anyway.
    let key = match msgs.as_slice() {
        [m] => format!("message:{}", m.message_id),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(&body))),
    };
    s.core.inbox.record(incoming().dedupe(key)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `auth[application_token]` against the stored one (constant time). With none stored, the
/// seed's bootstrap: the first event from the installed portal (`member_id` of the grant)
/// supplies it; anything else is refused.
async fn authenticate(s: &BridgeState, form: &Value) -> Result<(), String> {
    let presented = php_form::text(form, &["auth", "application_token"]).unwrap_or("");
    let stored = s
        .core
        .settings
        .secret("bitrix.application_token")
        .await
        .map_err(|e| e.to_string())?
        .filter(|t| !t.expose().is_empty());
    if let Some(expected) = stored {
        return if !presented.is_empty() && expected.matches(presented) {
            Ok(())
        } else {
            Err(format!(
                "auth[application_token] does not match. {}",
                fix::APPLICATION_TOKEN
            ))
        };
    }
    let grant = oauth::load(&s.core).await.map_err(|e| e.explained())?;
    let member = php_form::text(form, &["auth", "member_id"]).unwrap_or("");
    match grant {
        Some(g)
            if !presented.is_empty()
                && !member.is_empty()
                && Secret::new(g.member_id.clone()).matches(member) =>
        {
            s.core
                .settings
                .set("bitrix.application_token", presented)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                member_id = member,
                "application token bootstrapped from the installed portal"
            );
            Ok(())
        }
        _ => Err(format!(
            "no application token stored and the event is not from the installed portal. {}",
            fix::APPLICATION_TOKEN
        )),
    }
}
